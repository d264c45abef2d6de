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
    bool oom;
} oa_ctx;

static cJSON *dup_or(const cJSON *v, const char *fallback_json)
{
    return v ? cJSON_Duplicate(v, true) : cJSON_Parse(fallback_json);
}

static bool add_ref(cJSON *responses, const char *code, const char *name)
{
    cJSON *r = cJSON_AddObjectToObject(responses, code);
    char ref[96];
    snprintf(ref, sizeof ref, "#/components/responses/%s", name);
    return r && cJSON_AddStringToObject(r, "$ref", ref);
}

static bool oa_parameters(cJSON *op, const seg *segs, size_t nseg, const cJSON *pschema)
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
        cJSON *s =
            dup_or(cJSON_GetObjectItemCaseSensitive(props, segs[i].text), "{\"type\":\"string\"}");
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
        cJSON *s = cJSON_Duplicate(prop, true);
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

static bool oa_operation(oa_ctx *c, cJSON *op, const char *service, const char *version,
                         const cJSON *cmd, const char *name, const seg *segs, size_t nseg,
                         bool public)
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
        (desc && !cJSON_AddStringToObject(op, "summary", desc)))
        return false;
    cJSON *x = cJSON_AddObjectToObject(op, "x-loom");
    const char *event = loom__http_jstr(cmd, "successEvent");
    if (!x || !cJSON_AddStringToObject(x, "service", service) ||
        !cJSON_AddStringToObject(x, "version", version) ||
        !cJSON_AddStringToObject(x, "command", name) ||
        (event && !cJSON_AddStringToObject(x, "successEvent", event)))
        return false;
    if (!oa_parameters(op, segs, nseg, cJSON_GetObjectItemCaseSensitive(cmd, "parameterSchema")))
        return false;
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(cmd, "payloadSchema");
    if (payload) {
        cJSON *rb = cJSON_AddObjectToObject(op, "requestBody");
        cJSON *content = rb ? cJSON_AddObjectToObject(rb, "content") : NULL;
        cJSON *mt = content ? cJSON_AddObjectToObject(content, "application/json") : NULL;
        cJSON *s = cJSON_Duplicate(payload, true);
        if (!mt || !s || !cJSON_AddTrueToObject(rb, "required") ||
            !cJSON_AddItemToObject(mt, "schema", s)) {
            cJSON_Delete(s);
            return false;
        }
    }
    cJSON *responses = cJSON_AddObjectToObject(op, "responses");
    cJSON *ok = responses ? cJSON_AddObjectToObject(responses, "200") : NULL;
    cJSON *content = ok ? cJSON_AddObjectToObject(ok, "content") : NULL;
    cJSON *mt = content ? cJSON_AddObjectToObject(content, "application/json") : NULL;
    cJSON *s = dup_or(cJSON_GetObjectItemCaseSensitive(cmd, "outputSchema"), "{}");
    if (!mt || !s || !cJSON_AddStringToObject(ok, "description", "The command's result") ||
        !cJSON_AddItemToObject(mt, "schema", s)) {
        cJSON_Delete(s);
        return false;
    }
    cJSON *empty = cJSON_AddObjectToObject(responses, "204");
    if (!empty || !cJSON_AddStringToObject(empty, "description", "Done, with an empty result") ||
        !add_ref(responses, "400", "BadRequest") ||
        (!public && (loom__http_auth_on(c->h) || c->h->auth_required) && !add_ref(responses, "401", "Unauthorized")) ||
        !add_ref(responses, "404", "NotFound") || !add_ref(responses, "413", "TooLarge") ||
        !add_ref(responses, "503", "Unavailable") || !add_ref(responses, "504", "Timeout") ||
        !add_ref(responses, "default", "Error"))
        return false;
    if (public && !cJSON_AddArrayToObject(op, "security"))
        return false;
    return true;
}

/* Runs under the discovery lock: builds JSON only. */
static void oa_command(void *user, const char *service, const char *version,
                       const char *service_description, const cJSON *cmd, bool local)
{
    (void)service_description;
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
        if (!op || !oa_operation(c, op, service, version, cmd, name, segs, nseg, public))
            c->oom = true;
    }
    for (size_t i = 0; i < nseg; i++)
        free(segs[i].text);
    free(segs);
    free(label);
}

static const char oa_components[] =
    "{\"schemas\":{\"Error\":{\"type\":\"object\",\"required\":[\"status\",\"message\","
    "\"traceId\"],\"properties\":{\"status\":{\"type\":\"integer\",\"minimum\":400,"
    "\"maximum\":599},\"message\":{\"type\":\"string\"},\"data\":{},\"traceId\":{\"type\":"
    "\"string\",\"pattern\":\"^[0-9a-f]{32}$\"}}}},\"responses\":{"
    "\"BadRequest\":{\"description\":\"Invalid input: malformed JSON, bad parameters or a "
    "validation failure (data.errors lists each problem)\",\"content\":{\"application/json\":"
    "{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Unauthorized\":{\"description\":\"Missing or invalid credentials\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"NotFound\":{\"description\":\"Not found\",\"content\":{\"application/json\":{\"schema\":"
    "{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"TooLarge\":{\"description\":\"The request body is too large\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Unavailable\":{\"description\":\"No instance can serve the command right now\","
    "\"content\":{\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Timeout\":{\"description\":\"The command did not answer in time\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}},"
    "\"Error\":{\"description\":\"An error answered by the command\",\"content\":{"
    "\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/Error\"}}}}}}";

loom_err loom__http_openapi_load(loom_http *h, const loom_config *cfg)
{
    h->oa_title = strdup(loom__config_str(cfg, "http.openapi.title", "loom HTTP bridge"));
    h->oa_version = strdup(loom__config_str(cfg, "http.openapi.version", LOOM_VERSION_STRING));
    h->oa_description = strdup(loom__config_str(
        cfg, "http.openapi.description",
        "Every command with HTTP exposure, served as {base}/v{version}{path}. Errors are JSON "
        "{status, message, data?, traceId}."));
    return h->oa_title && h->oa_version && h->oa_description ? LOOM_OK : LOOM_ENOMEM;
}

void loom__http_openapi_fini(loom_http *h)
{
    free(h->oa_title);
    free(h->oa_version);
    free(h->oa_description);
}

cJSON *loom__http_openapi_doc(loom_http *h)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *info = doc && cJSON_AddStringToObject(doc, "openapi", "3.1.0")
                      ? cJSON_AddObjectToObject(doc, "info")
                      : NULL;
    cJSON *components = cJSON_Parse(oa_components);
    if (!info || !components || !cJSON_AddStringToObject(info, "title", h->oa_title) ||
        !cJSON_AddStringToObject(info, "version", h->oa_version) ||
        !cJSON_AddStringToObject(info, "description", h->oa_description))
        goto fail;
    oa_ctx c = {.h = h, .paths = cJSON_AddObjectToObject(doc, "paths")};
    if (!c.paths)
        goto fail;
    loom__commands_each(h->rt, oa_command, &c);
    if (c.oom)
        goto fail;
    if (loom__http_auth_on(h)) {
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
            goto fail;
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
                goto fail;
        }
    }
    if (!cJSON_AddItemToObject(doc, "components", components))
        goto fail;
    return doc;
fail:
    cJSON_Delete(components);
    cJSON_Delete(doc);
    return NULL;
}
