/* Schemas in the generated documents (openapi.c, asyncapi.c).
 *
 * A definition's schema is a JSON Schema document of its own: "#/..." and
 * "#anchor" refer into it, "ID" and "ID#..." into the service's shared
 * schema whose $id is ID (docs/schema.md). Placed under
 * components.schemas[NAME] of a document, each of those references is
 * rewritten to the document-wide form "#/components/schemas/NAME/...", the
 * shared schemas become components "{service}.v{version}.{ID}" of their
 * own, and their top-level $id is dropped (a base URI would make the
 * rewritten references relative to it). A reference to anything else is
 * left as written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "http/bridge.h"

/* "{prefix}.{id}", each byte of id outside [A-Za-z0-9_.-] as '_'. */
static char *shared_name(const char *prefix, const char *id, size_t id_len)
{
    char *n = loom__asprintf("%s.%.*s", prefix, (int)id_len, id);
    for (char *p = n ? n + strlen(prefix) + 1 : NULL; p && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            *p = '_';
    return n;
}

/* "/" and key as a JSON pointer token, in a URI fragment (RFC 6901 section 6). */
void loom__http_pointer_token(loom__sbuf *b, const char *key)
{
    loom__sbuf_puts(b, "/");
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if (*p == '~')
            loom__sbuf_puts(b, "~0");
        else if (*p == '/')
            loom__sbuf_puts(b, "~1");
        else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 strchr("-._!$&'()*+,;=:@", *p))
            loom__sbuf_add(b, (const char *)p, 1);
        else
            loom__sbuf_printf(b, "%%%02X", *p);
    }
}

/* The pointer (appended to b) of the schema in node with "$anchor": anchor. */
static bool find_anchor(const cJSON *node, const char *anchor, loom__sbuf *b, int depth)
{
    if (depth > 64 || !(cJSON_IsObject(node) || cJSON_IsArray(node)))
        return false;
    size_t mark = b->len, i = 0;
    const cJSON *child;
    cJSON_ArrayForEach(child, node)
    {
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i++);
        loom__http_pointer_token(b, cJSON_IsObject(node) ? child->string : idx);
        const char *a = loom__http_jstr(child, "$anchor");
        if ((a && strcmp(a, anchor) == 0) || find_anchor(child, anchor, b, depth + 1))
            return true;
        b->len = mark;
        if (b->p)
            b->p[mark] = '\0';
    }
    return false;
}

typedef struct rw {
    const char *self;       /* the component's name */
    const cJSON *self_root; /* its schema as written */
    const cJSON *shared;    /* the service's shared schemas (array) or NULL */
    const char *prefix;     /* "{service}.v{version}" */
} rw;

/* The document-wide form of ref, or NULL to keep it as written. */
static char *rewrite(const rw *w, const char *ref)
{
    const char *hash = strchr(ref, '#');
    const char *frag = hash ? hash + 1 : "";
    size_t uri_len = hash ? (size_t)(hash - ref) : strlen(ref);
    const cJSON *root = w->self_root;
    char *name = NULL;
    if (uri_len) {
        const cJSON *s;
        root = NULL;
        cJSON_ArrayForEach(s, w->shared)
        {
            const char *id = loom__http_jstr(s, "$id");
            if (id && strlen(id) == uri_len && memcmp(id, ref, uri_len) == 0)
                root = s;
        }
        if (!root || !(name = shared_name(w->prefix, ref, uri_len)))
            return NULL;
    }
    loom__sbuf b = {0};
    loom__sbuf_printf(&b, "#/components/schemas/%s", name ? name : w->self);
    free(name);
    if (*frag == '/')
        loom__sbuf_puts(&b, frag);
    else if (*frag && !find_anchor(root, frag, &b, 0))
        b.oom = true; /* an anchor it does not have: kept as written */
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static bool walk(const rw *w, cJSON *node, int depth)
{
    if (depth > 64)
        return true;
    cJSON *child;
    cJSON_ArrayForEach(child, node)
    {
        if (cJSON_IsObject(node) && cJSON_IsString(child) && strcmp(child->string, "$ref") == 0) {
            char *to = rewrite(w, child->valuestring);
            bool ok = !to || cJSON_SetValuestring(child, to);
            free(to);
            if (!ok)
                return false;
        } else if ((cJSON_IsObject(child) || cJSON_IsArray(child)) && !walk(w, child, depth + 1)) {
            return false;
        }
    }
    return true;
}

cJSON *loom__http_doc_schema(const cJSON *schema, const char *name, const cJSON *shared,
                             const char *prefix)
{
    cJSON *copy = cJSON_Duplicate(schema, true);
    rw w = {.self = name, .self_root = schema, .shared = shared, .prefix = prefix};
    if (!copy || (cJSON_IsObject(copy) && !walk(&w, copy, 0))) {
        cJSON_Delete(copy);
        return NULL;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(copy, "$id");
    return copy;
}

bool loom__http_doc_shared(cJSON *schemas, const cJSON *shared, const char *prefix)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, shared)
    {
        const char *id = loom__http_jstr(s, "$id");
        char *name = id ? shared_name(prefix, id, strlen(id)) : NULL;
        if (!id)
            continue;
        if (!name)
            return false;
        cJSON *c = cJSON_GetObjectItemCaseSensitive(schemas, name)
                       ? NULL
                       : loom__http_doc_schema(s, name, shared, prefix);
        bool ok = cJSON_GetObjectItemCaseSensitive(schemas, name) ||
                  (c && cJSON_AddItemToObject(schemas, name, c));
        if (!ok)
            cJSON_Delete(c);
        free(name);
        if (!ok)
            return false;
    }
    return true;
}
