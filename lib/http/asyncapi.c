/* The AsyncAPI 3.0 document (GET {base}/asyncapi.json, loom_main's
 * --asyncapi FILE), generated from the definitions of the services this
 * runtime runs (docs/http.md, "AsyncAPI"):
 *
 *   - per command: a request channel on its command topic and a reply
 *     channel on {prefix}/reply/{instanceId}, and one "receive" operation
 *     with a reply (the service answers);
 *   - per success event and subscription result event: a channel on
 *     {prefix}/evt/{event}/{service}/{version} and a "send" operation;
 *   - per subscription: a channel on its filter (wildcards as parameters)
 *     and a "receive" operation.
 *
 * Addresses are the configured broker's: MQTT topics, or NATS subjects
 * (mapped like lib/broker/nats.c does). Every message carries the wire
 * envelope's fields (DESIGN.md "Wire envelope") as headers and the
 * definitions' schemas as payload; operations carry MQTT and NATS bindings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker/adapters.h"
#include "codec/topic.h"
#include "config/config.h"
#include "core/features.h"
#include "core/runtime.h"
#include "http/bridge.h"

typedef struct aa_ctx {
    loom_runtime *rt;
    bool nats;
    cJSON *channels, *operations, *messages, *schemas;
    /* The service at hand. */
    cJSON *shared;    /* its shared schemas, parsed (array) or NULL */
    char prefix[300]; /* "{service}.v{version}" */
} aa_ctx;

static const char aa_envelope[] =
    "{\"type\":\"object\",\"description\":\"The loom wire envelope around every message "
    "(its payload member is the message payload)\",\"required\":[\"v\",\"messageType\",\"id\","
    "\"timestamp\"],\"properties\":{\"v\":{\"const\":1},\"messageType\":{\"enum\":[\"command\","
    "\"commandSuccessResponse\",\"commandErrorResponse\",\"customMessage\"]},\"id\":{\"$ref\":"
    "\"#/components/schemas/Id\"},\"timestamp\":{\"type\":\"integer\",\"description\":\"epoch "
    "ms\"},\"deadline\":{\"type\":\"integer\",\"description\":\"epoch ms after which nobody "
    "should work on it\"},\"contentType\":{\"type\":\"string\"},\"contentEncoding\":{\"type\":"
    "\"string\"},\"traceId\":{\"$ref\":\"#/components/schemas/Id\"},\"correlationId\":{\"$ref\":"
    "\"#/components/schemas/Id\"},\"principalId\":{\"type\":\"string\"},\"tenantId\":{\"type\":"
    "\"string\"},\"eventName\":{\"type\":\"string\"},\"replyTo\":{\"type\":\"string\","
    "\"description\":\"the topic the response goes to\"},\"sender\":{\"$ref\":\"#/components/"
    "schemas/Address\"},\"receiver\":{\"$ref\":\"#/components/schemas/Address\"},"
    "\"isHandledError\":{\"type\":\"boolean\"}}}";

static const char aa_shared_schemas[] =
    "{\"Id\":{\"type\":\"string\",\"pattern\":\"^[0-9a-f]{32}$\"},\"Address\":{\"type\":"
    "\"object\",\"properties\":{\"serviceName\":{\"type\":\"string\"},\"serviceVersion\":{"
    "\"type\":\"string\"},\"serviceTarget\":{\"type\":\"string\"},\"instanceId\":{\"type\":"
    "\"string\"}}},\"Error\":{\"type\":\"object\",\"required\":[\"status\",\"message\"],"
    "\"properties\":{\"status\":{\"type\":\"integer\",\"minimum\":400,\"maximum\":599},"
    "\"message\":{\"type\":\"string\"},\"data\":{}}}}";

static cJSON *ref_to(const char *prefix, const char *name)
{
    char *r = loom__asprintf("%s%s", prefix, name);
    cJSON *o = r ? cJSON_CreateObject() : NULL;
    if (o && !cJSON_AddStringToObject(o, "$ref", r)) {
        cJSON_Delete(o);
        o = NULL;
    }
    free(r);
    return o;
}

static bool add_taken(cJSON *obj, const char *key, cJSON *item)
{
    if (!item || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static bool push_taken(cJSON *arr, cJSON *item)
{
    if (!item || !cJSON_AddItemToArray(arr, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

/* A schema from definition text as a component; returns its $ref, or
 * {} (any JSON) without one. NULL on ENOMEM or unparsable text. */
static cJSON *schema_ref(aa_ctx *c, const char *name, const char *text)
{
    if (!text)
        return cJSON_CreateObject();
    if (cJSON_GetObjectItemCaseSensitive(c->schemas, name)) /* a command's output, again */
        return ref_to("#/components/schemas/", name);
    cJSON *parsed = cJSON_Parse(text);
    cJSON *s = parsed ? loom__http_doc_schema(parsed, name, c->shared, c->prefix) : NULL;
    cJSON_Delete(parsed);
    if (!add_taken(c->schemas, name, s))
        return NULL;
    return ref_to("#/components/schemas/", name);
}

/* components.messages[name]: payload (taken), the envelope as headers. */
static bool add_message(aa_ctx *c, const char *name, const char *title, cJSON *payload)
{
    cJSON *m = cJSON_CreateObject();
    if (!add_taken(c->messages, name, m)) {
        cJSON_Delete(payload);
        return false;
    }
    cJSON *mb = cJSON_CreateObject();
    return cJSON_AddStringToObject(m, "name", name) && cJSON_AddStringToObject(m, "title", title) &&
           cJSON_AddStringToObject(m, "contentType", "application/json") &&
           add_taken(m, "headers", ref_to("#/components/schemas/", "Envelope")) &&
           add_taken(m, "payload", payload) &&
           add_taken(m, "correlationId",
                     cJSON_Parse("{\"location\":\"$message.header#/correlationId\"}")) &&
           add_taken(m, "bindings", mb) && (mb = cJSON_AddObjectToObject(mb, "mqtt")) &&
           cJSON_AddStringToObject(mb, "contentType", "application/json") &&
           cJSON_AddStringToObject(mb, "bindingVersion", "0.2.0");
}

/* The broker's address for a loom topic or filter: the filter with each
 * "+" level named by params[i] ("{name}"), as an MQTT topic or a NATS
 * subject. malloc'd, NULL on ENOMEM. */
static char *address(aa_ctx *c, const char *topic, const char *const *params, size_t n)
{
#if LOOM_WITH_NATS
    char *mapped = c->nats ? loom__nats_subject(topic) : strdup(topic);
#else /* a build without NATS has no NATS broker */
    char *mapped = strdup(topic);
#endif
    if (!mapped)
        return NULL;
    char wild = c->nats ? '*' : '+', sep = c->nats ? '.' : '/';
    loom__sbuf b = {0};
    size_t k = 0;
    for (const char *p = mapped; *p; p++) {
        bool level = (p == mapped || p[-1] == sep) && (p[1] == sep || !p[1]);
        if (*p == wild && level && k < n)
            loom__sbuf_printf(&b, "{%s}", params[k++]);
        else
            loom__sbuf_add(&b, p, 1);
    }
    free(mapped);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p ? b.p : strdup("");
}

/* channels[key] = {address, messages: {each name -> components}, parameters}. */
static bool add_channel(aa_ctx *c, const char *key, const char *addr, const char *description,
                        const char *const *msgs, size_t n_msgs, const char *const *params,
                        size_t n_params)
{
    cJSON *ch = cJSON_CreateObject();
    if (!add_taken(c->channels, key, ch) || !addr ||
        !cJSON_AddStringToObject(ch, "address", addr) ||
        !cJSON_AddStringToObject(ch, "description", description))
        return false;
    cJSON *m = cJSON_AddObjectToObject(ch, "messages");
    for (size_t i = 0; m && i < n_msgs; i++)
        if (!add_taken(m, msgs[i], ref_to("#/components/messages/", msgs[i])))
            return false;
    cJSON *p = n_params ? cJSON_AddObjectToObject(ch, "parameters") : NULL;
    for (size_t i = 0; p && i < n_params; i++) {
        cJSON *one = cJSON_AddObjectToObject(p, params[i]);
        if (!one || !cJSON_AddStringToObject(one, "description", "Any value (a wildcard level)"))
            return false;
    }
    return m && (!n_params || p);
}

/* [{$ref: "#/channels/KEY/messages/NAME"}, ...] */
static cJSON *channel_messages(const char *key, const char *const *msgs, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n; i++) {
        char *pre = loom__asprintf("#/channels/%s/messages/", key);
        cJSON *r = pre ? ref_to(pre, msgs[i]) : NULL;
        free(pre);
        if (!push_taken(arr, r)) {
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

/* bindings.nats: the queue group (none in a build without NATS). */
static bool add_nats_binding(cJSON *bindings, const char *group)
{
#if LOOM_WITH_NATS
    cJSON *nats = cJSON_AddObjectToObject(bindings, "nats");
    char *queue = group ? loom__nats_queue(group) : NULL;
    bool ok = nats && (!group || (queue && cJSON_AddStringToObject(nats, "queue", queue))) &&
              cJSON_AddStringToObject(nats, "bindingVersion", "0.1.0");
    free(queue);
    return ok;
#else
    (void)bindings;
    (void)group;
    return true;
#endif
}

/* operations[key] = {action, channel, messages, bindings (MQTT qos, NATS queue)}. */
static cJSON *add_operation(aa_ctx *c, const char *key, const char *action, const char *channel,
                            const char *summary, const char *const *msgs, size_t n, int qos,
                            const char *group)
{
    cJSON *op = cJSON_CreateObject();
    if (!add_taken(c->operations, key, op) || !cJSON_AddStringToObject(op, "action", action) ||
        !add_taken(op, "channel", ref_to("#/channels/", channel)) ||
        !cJSON_AddStringToObject(op, "summary", summary) ||
        !add_taken(op, "messages", channel_messages(channel, msgs, n)))
        return NULL;
    cJSON *b = cJSON_AddObjectToObject(op, "bindings");
    cJSON *mqtt = b ? cJSON_AddObjectToObject(b, "mqtt") : NULL;
    bool ok = mqtt && cJSON_AddNumberToObject(mqtt, "qos", qos) &&
              cJSON_AddFalseToObject(mqtt, "retain") &&
              cJSON_AddStringToObject(mqtt, "bindingVersion", "0.2.0") &&
              add_nats_binding(b, group);
    return ok ? op : NULL;
}

/* A command: request and reply channels, one "receive" operation with a
 * reply, its messages and their schemas. */
static bool aa_command(aa_ctx *c, const loom__service *s, const loom__command *cmd)
{
    const loom_service_def *sd = s->def;
    const loom_command_def *d = cmd->def;
    char id[3 * 160], n_req[520], n_rep[520], n_err[520], k_p[520], k_q[520], k_o[520];
    snprintf(id, sizeof id, "%s.v%s.%s", sd->name, sd->version, d->name);
    snprintf(n_req, sizeof n_req, "%s.request", id);
    snprintf(n_rep, sizeof n_rep, "%s.reply", id);
    snprintf(n_err, sizeof n_err, "%s.error", id);
    snprintf(k_p, sizeof k_p, "%s.payload", id);
    snprintf(k_q, sizeof k_q, "%s.parameter", id);
    snprintf(k_o, sizeof k_o, "%s.output", id);
    cJSON *req = cJSON_Parse("{\"type\":\"object\",\"description\":\"The envelope's payload of a "
                             "command: its payload and its parameter\",\"properties\":{}}");
    cJSON *props = cJSON_GetObjectItemCaseSensitive(req, "properties");
    if (!props || !add_taken(props, "payload", schema_ref(c, k_p, d->payload_schema)) ||
        !add_taken(props, "parameter", schema_ref(c, k_q, d->parameter_schema))) {
        cJSON_Delete(req);
        return false;
    }
    loom__sbuf errs = {0};
    loom__sbuf_puts(&errs, "The command failed: status, message and data.");
    for (size_t i = 0; d->errors && d->errors[i].status; i++)
        loom__sbuf_printf(&errs, " %d: %s.", d->errors[i].status, d->errors[i].description);
    bool ok = !errs.oom && add_message(c, n_req, d->description ? d->description : d->name, req) &&
              add_message(c, n_rep, "The command's result", schema_ref(c, k_o, d->output_schema)) &&
              add_message(c, n_err, errs.p, ref_to("#/components/schemas/", "Error"));
    free(errs.p);
    const char *const reply_params[] = {"instanceId"};
    const char *const req_msgs[] = {n_req}, *const rep_msgs[] = {n_rep, n_err};
    const char *const one[] = {NULL};
    char *reply_topic = loom__topic_build(c->rt->prefix, "reply", one, 1);
    char *a_req = ok ? address(c, cmd->tok.filter, NULL, 0) : NULL;
    char *a_rep = reply_topic ? address(c, reply_topic, reply_params, 1) : NULL;
    free(reply_topic);
    ok = ok && a_req && a_rep &&
         add_channel(c, n_req, a_req, "Requests to the command (one instance gets each)", req_msgs,
                     1, NULL, 0) &&
         add_channel(c, n_rep, a_rep, "The caller's reply topic, named in the request's replyTo",
                     rep_msgs, 2, reply_params, 1);
    free(a_req);
    free(a_rep);
    cJSON *op =
        ok ? add_operation(c, id, "receive", n_req, d->description ? d->description : d->name,
                           req_msgs, 1, c->rt->qos_command, cmd->tok.group)
           : NULL;
    cJSON *reply = op ? cJSON_AddObjectToObject(op, "reply") : NULL;
    return reply && add_taken(reply, "channel", ref_to("#/channels/", n_rep)) &&
           add_taken(reply, "messages", channel_messages(n_rep, rep_msgs, 2));
}

/* An event this service sends: {prefix}/evt/{event}/{service}/{version}. */
static bool aa_sent_event(aa_ctx *c, const loom__service *s, const char *event,
                          const char *schema_name, const char *schema, const char *why)
{
    const loom_service_def *sd = s->def;
    char key[600];
    snprintf(key, sizeof key, "event.%s.%s.v%s", event, sd->name, sd->version);
    if (cJSON_GetObjectItemCaseSensitive(c->channels, key))
        return true; /* another command or subscription sends it too */
    const char *const segs[] = {event, sd->name, sd->version};
    char *topic = loom__topic_build(c->rt->prefix, "evt", segs, 3);
    char *addr = topic ? address(c, topic, NULL, 0) : NULL;
    free(topic);
    const char *const msgs[] = {key};
    cJSON *payload = schema_name ? schema_ref(c, schema_name, schema) : cJSON_CreateObject();
    char title[700], summary[700];
    snprintf(title, sizeof title, "The %s event from %s v%s", event, sd->name, sd->version);
    snprintf(summary, sizeof summary, "Emits %s (%s)", event, why);
    bool ok = addr && add_message(c, key, title, payload) &&
              add_channel(c, key, addr, title, msgs, 1, NULL, 0) &&
              add_operation(c, key, "send", key, summary, msgs, 1, c->rt->qos_event, NULL);
    free(addr);
    return ok;
}

/* A subscription: a channel on its filter, a "receive" operation. */
static bool aa_subscription(aa_ctx *c, const loom__service *s, const loom__subscription *sub)
{
    const loom_service_def *sd = s->def;
    const loom_subscription_def *d = sub->def;
    char key[600], schema[620];
    snprintf(key, sizeof key, "%s.v%s.subscription.%s", sd->name, sd->version, d->name);
    snprintf(schema, sizeof schema, "%s.payload", key);
    const char *params[3];
    size_t n = 0;
    if (!d->filter.event_name)
        params[n++] = "eventName";
    if (!d->filter.sender_service)
        params[n++] = "senderService";
    if (!d->filter.sender_version)
        params[n++] = "senderVersion";
    char *addr = address(c, sub->tok.filter, params, n);
    const char *const msgs[] = {key};
    const char *desc = d->description ? d->description : d->name;
    bool ok =
        addr && add_message(c, key, desc, schema_ref(c, schema, d->payload_schema)) &&
        add_channel(c, key, addr, "The events the subscription's filter matches", msgs, 1, params,
                    n) &&
        add_operation(c, key, "receive", key, desc, msgs, 1, c->rt->qos_event, sub->tok.group);
    free(addr);
    return ok && (!d->emit_event ||
                  aa_sent_event(c, s, d->emit_event, NULL, NULL, "the subscription's result"));
}

/* servers.broker from broker.url, without credentials; none for memory:. */
static bool aa_servers(aa_ctx *c, cJSON *doc)
{
    const char *url = c->rt->broker_url, *sep = url ? strstr(url, "://") : NULL;
    if (!sep)
        return true;
    size_t sl = (size_t)(sep - url);
    const char *protocol = sl == 4 && strncasecmp(url, "mqtt", 4) == 0    ? "mqtt"
                           : sl == 5 && strncasecmp(url, "mqtts", 5) == 0 ? "secure-mqtt"
                           : sl == 4 && strncasecmp(url, "nats", 4) == 0  ? "nats"
                                                                          : NULL;
    if (!protocol)
        return true;
    const char *host = sep + 3;
    size_t hl = strcspn(host, ",/?");
    const char *at = memchr(host, '@', hl); /* user:password@ is never shown */
    for (const char *p = at; p && p < host + hl;
         p = memchr(p + 1, '@', (size_t)(host + hl - p - 1)))
        at = p;
    if (at) {
        hl -= (size_t)(at + 1 - host);
        host = at + 1;
    }
    cJSON *servers = cJSON_AddObjectToObject(doc, "servers");
    cJSON *b = servers ? cJSON_AddObjectToObject(servers, "broker") : NULL;
    char *h = b ? strndup(host, hl) : NULL;
    bool ok =
        h && cJSON_AddStringToObject(b, "host", h) &&
        cJSON_AddStringToObject(b, "protocol", protocol) &&
        (strcmp(protocol, "nats") == 0 || cJSON_AddStringToObject(b, "protocolVersion", "5")) &&
        cJSON_AddStringToObject(b, "description", "The broker of broker.url");
    free(h);
    return ok;
}

/* c->shared and c->prefix for service s; false on ENOMEM. */
static bool aa_enter(aa_ctx *c, const loom__service *s)
{
    cJSON_Delete(c->shared);
    c->shared = NULL;
    snprintf(c->prefix, sizeof c->prefix, "%s.v%s", s->def->name, s->def->version);
    for (size_t j = 0; s->def->schemas && s->def->schemas[j]; j++) {
        cJSON *one = cJSON_Parse(s->def->schemas[j]);
        if ((!c->shared && !(c->shared = cJSON_CreateArray())) || !push_taken(c->shared, one))
            return false;
    }
    return loom__http_doc_shared(c->schemas, c->shared, c->prefix);
}

static bool aa_services(aa_ctx *c)
{
    for (size_t i = 0; i < c->rt->n_services; i++) {
        const loom__service *s = &c->rt->services[i];
        if (!aa_enter(c, s))
            return false;
        for (size_t j = 0; j < s->n_cmds; j++) {
            const loom_command_def *d = s->cmds[j].def;
            char out[600];
            snprintf(out, sizeof out, "%s.v%s.%s.output", s->def->name, s->def->version, d->name);
            if (!aa_command(c, s, &s->cmds[j]) ||
                (d->success_event &&
                 !aa_sent_event(c, s, d->success_event, d->output_schema ? out : NULL,
                                d->output_schema, "the command's success")))
                return false;
        }
        for (size_t j = 0; j < s->n_subs; j++)
            if (!aa_subscription(c, s, &s->subs[j]))
                return false;
    }
    return true;
}

cJSON *loom__http_asyncapi_doc(loom_http *h)
{
    cJSON *doc = loom__http_doc_new(h, true);
    aa_ctx c = {.rt = h->rt,
                .nats = h->rt->broker_url && strncasecmp(h->rt->broker_url, "nats:", 5) == 0};
    if (!doc || !cJSON_AddStringToObject(doc, "defaultContentType", "application/json") ||
        !aa_servers(&c, doc))
        goto fail;
    c.channels = cJSON_AddObjectToObject(doc, "channels");
    c.operations = cJSON_AddObjectToObject(doc, "operations");
    cJSON *comp = cJSON_AddObjectToObject(doc, "components");
    c.schemas = comp ? cJSON_Parse(aa_shared_schemas) : NULL;
    if (!c.channels || !c.operations || !add_taken(comp, "schemas", c.schemas) ||
        !(c.messages = cJSON_AddObjectToObject(comp, "messages")) ||
        !add_taken(c.schemas, "Envelope", cJSON_Parse(aa_envelope)) || !aa_services(&c))
        goto fail;
    cJSON_Delete(c.shared);
    return doc;
fail:
    cJSON_Delete(c.shared);
    cJSON_Delete(doc);
    return NULL;
}
