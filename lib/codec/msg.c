/* The decoded message: construction, accessors, and the JSON wire envelope.
 *
 * The decoder treats every input as hostile. loom__json_parse (json.c)
 * checks the text (UTF-8, control characters, \u0000, depth, trailing data,
 * non-finite numbers) and parses it; then validate() only reads the tree and
 * collects borrowed pointers, and build() copies the envelope strings and
 * detaches (never duplicates) the payload subtrees.
 * The encoder refuses to produce anything step 1 or 3 would reject, so a
 * message that encodes always decodes on the other side.
 */
#define _GNU_SOURCE
#include "msg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "codec/json.h"
#include "core/util.h"

/* 2^53: timestamps and deadlines must be exactly representable as doubles. */
#define MAX_SAFE_INT 9007199254740992.0

/* ------------------------------------------------------------------------ */
/* Errors and plain buffers                                                  */

const char *loom_strerror(loom_err err)
{
    switch (err) {
    case LOOM_OK:
        return "success";
    case LOOM_EINVAL:
        return "invalid argument";
    case LOOM_ENOMEM:
        return "out of memory";
    case LOOM_ENOTFOUND:
        return "not found";
    case LOOM_EEXIST:
        return "already exists";
    case LOOM_ESTATE:
        return "not allowed in the current state";
    case LOOM_ETIMEDOUT:
        return "timed out";
    case LOOM_EUNAVAILABLE:
        return "unavailable";
    case LOOM_ECLOSED:
        return "closed";
    case LOOM_EPARSE:
        return "malformed input";
    case LOOM_ECONFIG:
        return "bad configuration";
    case LOOM_EIO:
        return "I/O error";
    case LOOM_EOVERLOAD:
        return "overloaded";
    case LOOM_EUNSUPPORTED:
        return "not supported";
    case LOOM_ETOOBIG:
        return "too big";
    }
    return "unknown error";
}

void loom_free(void *ptr)
{
    free(ptr);
}

/* ------------------------------------------------------------------------ */
/* Construction and reference counting                                       */

loom_msg *loom__msg_new(loom_msg_type type)
{
    /* Everything but the string arena starts zeroed; the arena is written
     * before it is read (arena_used). */
    loom_msg *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    memset(m, 0, offsetof(loom_msg, arena));
    atomic_init(&m->refs, 1);
    m->type = type;
    m->verified = true; /* made here */
    loom__random_id(m->id);
    m->timestamp = loom__now_ms();
    return m;
}

/* A copy of v in m's arena when it fits, else on the heap. */
static char *msg_strdup(loom_msg *m, const char *v)
{
    size_t n = strlen(v) + 1;
    if (n <= sizeof m->arena - m->arena_used) {
        char *p = m->arena + m->arena_used;
        memcpy(p, v, n);
        m->arena_used = (uint16_t)(m->arena_used + n);
        return p;
    }
    return strdup(v);
}

static void msg_strfree(loom_msg *m, const char *p)
{
    if (p && (p < m->arena || p >= m->arena + sizeof m->arena))
        free((char *)p);
}

loom_err loom__msg_set(loom_msg *m, char **field, const char *v)
{
    if (!m || !field)
        return LOOM_EINVAL;
    char *copy = NULL;
    if (v && !(copy = msg_strdup(m, v)))
        return LOOM_ENOMEM;
    msg_strfree(m, *field);
    *field = copy;
    return LOOM_OK;
}

static void address_free(loom_msg *m, const loom_address *a)
{
    msg_strfree(m, a->service);
    msg_strfree(m, a->version);
    msg_strfree(m, a->target);
    msg_strfree(m, a->instance);
}

static const char *addr_dup(loom_msg *m, const char *v, bool *ok)
{
    if (!v)
        return NULL;
    char *c = msg_strdup(m, v);
    if (!c)
        *ok = false;
    return c;
}

loom_err loom__msg_set_address(loom_msg *m, loom_address *a, const char *service,
                               const char *version, const char *target, const char *instance)
{
    if (!m || !a)
        return LOOM_EINVAL;
    /* All or nothing: the old values stay when a copy fails. */
    bool ok = true;
    loom_address copy = {addr_dup(m, service, &ok), addr_dup(m, version, &ok),
                         addr_dup(m, target, &ok), addr_dup(m, instance, &ok)};
    address_free(m, ok ? a : &copy);
    if (!ok)
        return LOOM_ENOMEM;
    *a = copy;
    return LOOM_OK;
}

/* Fills the correlation of a response from its request: the response goes
 * back to the request's sender and carries the request id as its
 * correlationId. */
static bool correlate(loom_msg *r, const loom_msg *req)
{
    if (!req)
        return true;
    memcpy(r->correlation_id, req->id, sizeof r->correlation_id);
    memcpy(r->trace_id, req->trace_id, sizeof r->trace_id);
    return loom__msg_set(r, &r->principal_id, req->principal_id) == LOOM_OK &&
           loom__msg_set(r, &r->peer, req->signer) == LOOM_OK &&
           loom__msg_set(r, &r->tenant_id, req->tenant_id) == LOOM_OK &&
           loom__msg_set_address(r, &r->receiver, req->sender.service, req->sender.version,
                                 req->sender.target, req->sender.instance) == LOOM_OK &&
           loom__msg_set_address(r, &r->sender, req->receiver.service, req->receiver.version,
                                 req->receiver.target, req->receiver.instance) == LOOM_OK;
}

loom_msg *loom__msg_error_for(const loom_msg *request, int status, const char *message, cJSON *data,
                              bool handled)
{
    loom_msg *r = loom__msg_new(LOOM_MSG_ERROR);
    if (!r)
        return NULL;
    r->status = status;
    r->handled = handled;
    if (!correlate(r, request) ||
        loom__msg_set(r, &r->error_message, message ? message : "") != LOOM_OK) {
        loom_msg_release(r); /* data is not attached yet: the caller keeps it */
        return NULL;
    }
    r->error_data = data;
    return r;
}

loom_msg *loom__msg_success_for(const loom_msg *request, cJSON *result)
{
    loom_msg *r = loom__msg_new(LOOM_MSG_SUCCESS);
    if (!r)
        return NULL;
    if (!correlate(r, request)) {
        loom_msg_release(r); /* result is not attached yet: the caller keeps it */
        return NULL;
    }
    r->payload = result;
    return r;
}

loom_msg *loom_msg_retain(loom_msg *m)
{
    if (m)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void loom_msg_release(loom_msg *m)
{
    if (!m)
        return;
    /* acq_rel: every write made through other references happens before
     * the free below. */
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    msg_strfree(m, m->content_type);
    msg_strfree(m, m->content_encoding);
    msg_strfree(m, m->principal_id);
    msg_strfree(m, m->tenant_id);
    msg_strfree(m, m->event_name);
    msg_strfree(m, m->reply_to);
    msg_strfree(m, m->info_type);
    msg_strfree(m, m->signer);
    msg_strfree(m, m->peer);
    address_free(m, &m->sender);
    address_free(m, &m->receiver);
    cJSON_Delete(m->payload);
    cJSON_Delete(m->parameter);
    msg_strfree(m, m->error_message);
    cJSON_Delete(m->error_data);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                 */

loom_msg_type loom_msg_type_of(const loom_msg *m)
{
    return m ? m->type : 0;
}

const char *loom_msg_type_name(loom_msg_type t)
{
    switch (t) {
    case LOOM_MSG_COMMAND:
        return "command";
    case LOOM_MSG_SUCCESS:
        return "commandSuccessResponse";
    case LOOM_MSG_ERROR:
        return "commandErrorResponse";
    case LOOM_MSG_CUSTOM:
        return "customMessage";
    case LOOM_MSG_INFO:
        return "info";
    }
    return "unknown";
}

const cJSON *loom_msg_payload(const loom_msg *m)
{
    return m && m->type != LOOM_MSG_ERROR ? m->payload : NULL;
}

const cJSON *loom_msg_parameter(const loom_msg *m)
{
    return m && m->type == LOOM_MSG_COMMAND ? m->parameter : NULL;
}

int loom_msg_status(const loom_msg *m)
{
    if (!m)
        return 0;
    if (m->type == LOOM_MSG_SUCCESS)
        return !m->payload || cJSON_IsNull(m->payload) ? 204 : 200;
    if (m->type == LOOM_MSG_ERROR)
        return m->status;
    return 0;
}

const char *loom_msg_error(const loom_msg *m)
{
    return m && m->type == LOOM_MSG_ERROR ? m->error_message : NULL;
}

const cJSON *loom_msg_error_data(const loom_msg *m)
{
    return m && m->type == LOOM_MSG_ERROR ? m->error_data : NULL;
}

bool loom_msg_is_handled_error(const loom_msg *m)
{
    return m && m->type == LOOM_MSG_ERROR && m->handled;
}

static const char *id_or_null(const char *id)
{
    return id[0] ? id : NULL;
}

const char *loom_msg_id(const loom_msg *m)
{
    return m ? id_or_null(m->id) : NULL;
}

const char *loom_msg_trace_id(const loom_msg *m)
{
    return m ? id_or_null(m->trace_id) : NULL;
}

const char *loom_msg_correlation_id(const loom_msg *m)
{
    return m ? id_or_null(m->correlation_id) : NULL;
}

const char *loom_msg_principal_id(const loom_msg *m)
{
    return m ? m->principal_id : NULL;
}

const char *loom_msg_tenant_id(const loom_msg *m)
{
    return m ? m->tenant_id : NULL;
}

const char *loom_msg_event_name(const loom_msg *m)
{
    return m ? m->event_name : NULL;
}

const char *loom_msg_reply_to(const loom_msg *m)
{
    return m ? m->reply_to : NULL;
}

int64_t loom_msg_timestamp(const loom_msg *m)
{
    return m ? m->timestamp : 0;
}

int64_t loom_msg_deadline(const loom_msg *m)
{
    return m ? m->deadline : 0;
}

bool loom_msg_identity_verified(const loom_msg *m)
{
    return m && m->verified;
}

const char *loom_msg_signer(const loom_msg *m)
{
    return m ? m->signer : NULL;
}

const loom_address *loom_msg_sender(const loom_msg *m)
{
    return m ? &m->sender : NULL;
}

const loom_address *loom_msg_receiver(const loom_msg *m)
{
    return m ? &m->receiver : NULL;
}

cJSON *loom_msg_result_json(const loom_msg *m)
{
    if (!m)
        return NULL;
    if (m->type == LOOM_MSG_SUCCESS) {
        if (!m->payload || cJSON_IsNull(m->payload))
            return NULL;
        return cJSON_Duplicate(m->payload, true);
    }
    if (m->type != LOOM_MSG_ERROR)
        return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddNumberToObject(o, "status", m->status) ||
        !cJSON_AddStringToObject(o, "message", m->error_message ? m->error_message : ""))
        goto fail;
    if (m->error_data) {
        cJSON *d = cJSON_Duplicate(m->error_data, true);
        if (!d || !cJSON_AddItemToObject(o, "data", d)) {
            cJSON_Delete(d); /* not o's when adding it failed */
            goto fail;
        }
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                   */

static bool str_utf8(const char *s)
{
    return loom__utf8_valid(s, strlen(s));
}

/* The output buffer is the shared loom__sbuf (core/util.h): its reserve and
 * append are inline, so the encoder's per-field writes stay cheap. */
#define wb_lit(b, s) loom__sbuf_add((b), (s), sizeof(s) - 1)

static void wb_int(loom__sbuf *b, int64_t v)
{
    char tmp[24], *e = tmp + sizeof tmp, *p = e;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    loom__sbuf_add(b, p, (size_t)(e - p));
}

/* ,"key":"value" when value is set. key is a literal without escapes. */
static void wb_field_str(loom__sbuf *b, const char *key, const char *v)
{
    if (!v)
        return;
    loom__sbuf_add(b, ",\"", 2);
    loom__sbuf_add(b, key, strlen(key));
    loom__sbuf_add(b, "\":", 2);
    loom__json_write_string(b, v);
}

static void wb_address(loom__sbuf *b, const char *key, const loom_address *a)
{
    if (!a->service && !a->version && !a->target && !a->instance)
        return;
    loom__sbuf_add(b, ",\"", 2);
    loom__sbuf_add(b, key, strlen(key));
    loom__sbuf_add(b, "\":{", 3);
    size_t start = b->len;
    const char *names[4] = {"serviceName", "serviceVersion", "serviceTarget", "instanceId"};
    const char *vals[4] = {a->service, a->version, a->target, a->instance};
    for (int i = 0; i < 4; i++) {
        if (!vals[i])
            continue;
        if (b->len != start)
            wb_lit(b, ",");
        wb_lit(b, "\"");
        loom__sbuf_add(b, names[i], strlen(names[i]));
        wb_lit(b, "\":");
        loom__json_write_string(b, vals[i]);
    }
    wb_lit(b, "}");
}

static loom_err check_str(const char *s)
{
    if (!s)
        return LOOM_OK;
    if (strnlen(s, LOOM_MAX_STRING + 1) > LOOM_MAX_STRING)
        return LOOM_ETOOBIG;
    return str_utf8(s) ? LOOM_OK : LOOM_EINVAL;
}

static bool time_ok(int64_t t)
{
    return t >= 0 && (double)t < MAX_SAFE_INT;
}

/* Everything the decoder would reject is refused here, so an encoded
 * message always decodes. */
static loom_err encode_check(const loom_msg *m)
{
    loom_err e;
    if (!loom__is_id(m->id) || (m->trace_id[0] && !loom__is_id(m->trace_id)) ||
        (m->correlation_id[0] && !loom__is_id(m->correlation_id)))
        return LOOM_EINVAL;
    if (!time_ok(m->timestamp) || !time_ok(m->deadline))
        return LOOM_EINVAL;
    const char *strs[] = {m->content_type,    m->content_encoding, m->principal_id,
                          m->tenant_id,       m->event_name,       m->reply_to,
                          m->sender.service,  m->sender.version,   m->sender.target,
                          m->sender.instance, m->receiver.service, m->receiver.version,
                          m->receiver.target, m->receiver.instance};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(strs); i++)
        if ((e = check_str(strs[i])))
            return e;
    /* The root object is one level; command and error bodies another. */
    switch (m->type) {
    case LOOM_MSG_COMMAND:
        if (!m->receiver.service || !*m->receiver.service || !m->receiver.version ||
            !*m->receiver.version || !m->receiver.target || !*m->receiver.target)
            return LOOM_EINVAL;
        if (m->parameter && !cJSON_IsObject(m->parameter))
            return LOOM_EINVAL;
        if ((e = loom__json_check(m->payload, LOOM_MAX_NESTING - 2)) ||
            (e = loom__json_check(m->parameter, LOOM_MAX_NESTING - 2)))
            return e;
        return LOOM_OK;
    case LOOM_MSG_ERROR:
        if (m->status < 100 || m->status > 599)
            return LOOM_EINVAL;
        if (m->error_message && !str_utf8(m->error_message))
            return LOOM_EINVAL;
        return loom__json_check(m->error_data, LOOM_MAX_NESTING - 2);
    case LOOM_MSG_CUSTOM:
        if (!m->event_name || !*m->event_name)
            return LOOM_EINVAL;
        return loom__json_check(m->payload, LOOM_MAX_NESTING - 1);
    case LOOM_MSG_INFO:
        if (m->info_type) {
            if (strncmp(m->info_type, "info", 4) != 0)
                return LOOM_EINVAL;
            if ((e = check_str(m->info_type)))
                return e;
        }
        return loom__json_check(m->payload, LOOM_MAX_NESTING - 1);
    case LOOM_MSG_SUCCESS:
        return loom__json_check(m->payload, LOOM_MAX_NESTING - 1);
    }
    return LOOM_EINVAL;
}

loom_err loom_msg_encode(const loom_msg *m, char **out, size_t *len)
{
    if (!m || !out)
        return LOOM_EINVAL;
    *out = NULL;
    if (len)
        *len = 0;
    loom_err e = encode_check(m);
    if (e)
        return e;

    loom__sbuf b = {.cap = 1024};
    if (!(b.p = malloc(b.cap)))
        return LOOM_ENOMEM;
    const char *type =
        m->type == LOOM_MSG_INFO && m->info_type ? m->info_type : loom_msg_type_name(m->type);
    wb_lit(&b, "{\"v\":1,\"messageType\":");
    loom__json_write_string(&b, type);
    wb_lit(&b, ",\"id\":\"");
    loom__sbuf_add(&b, m->id, LOOM_ID_LEN);
    wb_lit(&b, "\",\"timestamp\":");
    wb_int(&b, m->timestamp);
    wb_field_str(&b, "contentType", m->content_type);
    wb_field_str(&b, "contentEncoding", m->content_encoding);
    wb_field_str(&b, "traceId", m->trace_id[0] ? m->trace_id : NULL);
    wb_field_str(&b, "correlationId", m->correlation_id[0] ? m->correlation_id : NULL);
    wb_field_str(&b, "principalId", m->principal_id);
    wb_field_str(&b, "tenantId", m->tenant_id);
    wb_field_str(&b, "eventName", m->event_name);
    wb_address(&b, "sender", &m->sender);
    wb_address(&b, "receiver", &m->receiver);
    switch (m->type) {
    case LOOM_MSG_COMMAND:
        wb_lit(&b, ",\"payload\":{");
        if (m->payload) {
            wb_lit(&b, "\"payload\":");
            loom__json_write(&b, m->payload);
        }
        if (m->parameter) {
            if (m->payload)
                wb_lit(&b, ",");
            wb_lit(&b, "\"parameter\":");
            loom__json_write(&b, m->parameter);
        }
        wb_lit(&b, "}");
        break;
    case LOOM_MSG_ERROR:
        wb_lit(&b, ",\"payload\":{\"status\":");
        wb_int(&b, m->status);
        wb_lit(&b, ",\"message\":");
        loom__json_write_string(&b, m->error_message ? m->error_message : "");
        if (m->error_data) {
            wb_lit(&b, ",\"data\":");
            loom__json_write(&b, m->error_data);
        }
        wb_lit(&b, "},\"isHandledError\":");
        if (m->handled)
            wb_lit(&b, "true");
        else
            wb_lit(&b, "false");
        break;
    default:
        if (m->payload) {
            wb_lit(&b, ",\"payload\":");
            loom__json_write(&b, m->payload);
        }
        break;
    }
    if (m->deadline) {
        wb_lit(&b, ",\"deadline\":");
        wb_int(&b, m->deadline);
    }
    wb_field_str(&b, "replyTo", m->reply_to);
    wb_lit(&b, "}");
    if (b.oom) {
        free(b.p);
        return LOOM_ENOMEM;
    }
    b.p[b.len] = '\0';
    *out = b.p;
    if (len)
        *len = b.len;
    return LOOM_OK;
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                   */

/* Where a decode failure's one-line reason goes (buf may be NULL). */
typedef struct errsink {
    char *buf;
    size_t len;
} errsink;

static loom_err fail(errsink *eb, loom_err code, const char *fmt, ...) LOOM_PRINTF(3, 4);

static loom_err fail(errsink *eb, loom_err code, const char *fmt, ...)
{
    if (eb->buf && eb->len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb->buf, eb->len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Collects the members of obj named in names[] into slots[] (NULL when
 * absent) in one pass. A known member given twice is rejected: two parsers
 * that keep different duplicates must not see different messages. */
static loom_err pick(const cJSON *obj, const char *const *names, size_t n, const cJSON **slots,
                     const char *path, errsink *eb)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        const char *k = it->string;
        if (!k)
            continue;
        for (size_t i = 0; i < n; i++) {
            if (k[0] != names[i][0] || strcmp(k, names[i]) != 0)
                continue;
            if (slots[i])
                return fail(eb, LOOM_EPARSE, "field '%s%s': duplicate key", path, names[i]);
            slots[i] = it;
            break;
        }
    }
    return LOOM_OK;
}

static bool absent(const cJSON *it)
{
    return !it || cJSON_IsNull(it);
}

/* An optional envelope string: absent or null gives NULL. */
static loom_err get_str(const cJSON *it, const char *path, const char *name, const char **out,
                        errsink *eb)
{
    *out = NULL;
    if (absent(it))
        return LOOM_OK;
    if (!cJSON_IsString(it) || !it->valuestring)
        return fail(eb, LOOM_EPARSE, "field '%s%s': expected a string", path, name);
    if (strnlen(it->valuestring, LOOM_MAX_STRING + 1) > LOOM_MAX_STRING)
        return fail(eb, LOOM_ETOOBIG, "field '%s%s': longer than %d bytes", path, name,
                    LOOM_MAX_STRING);
    *out = it->valuestring;
    return LOOM_OK;
}

static loom_err get_id(const cJSON *it, const char *name, bool required, const char **out,
                       errsink *eb)
{
    *out = NULL;
    if (absent(it)) {
        if (required)
            return fail(eb, LOOM_EPARSE, "field '%s': missing", name);
        return LOOM_OK;
    }
    if (!cJSON_IsString(it) || !loom__is_id(it->valuestring))
        return fail(eb, LOOM_EPARSE, "field '%s': expected 32 lowercase hex characters", name);
    *out = it->valuestring;
    return LOOM_OK;
}

static loom_err get_time(const cJSON *it, const char *name, bool required, int64_t *out,
                         errsink *eb)
{
    *out = 0;
    if (absent(it)) {
        if (required)
            return fail(eb, LOOM_EPARSE, "field '%s': missing", name);
        return LOOM_OK;
    }
    double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
    /* The negated comparison also rejects NaN; the range check comes before
     * the conversion, which would be undefined otherwise. */
    if (!(d >= 0 && d < MAX_SAFE_INT) || (double)(int64_t)d != d)
        return fail(eb, LOOM_EPARSE,
                    "field '%s': expected an integer number of milliseconds from 0 to 2^53-1",
                    name);
    *out = (int64_t)d;
    return LOOM_OK;
}

/* The value quoted in an error message: at most 40 bytes, cut on a UTF-8
 * boundary, with control characters and '"' shown as '?' so the message
 * stays on one line. */
static void quote(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(s), max = cap - 4;
    bool cut = n > max;
    if (cut) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f || s[i] == '"' ? '?' : s[i];
    if (cut)
        memcpy(dst + n, "...", 3), n += 3;
    dst[n] = '\0';
}

enum {
    F_V,
    F_TYPE,
    F_ID,
    F_TIMESTAMP,
    F_CONTENT_TYPE,
    F_CONTENT_ENCODING,
    F_TRACE,
    F_CORRELATION,
    F_PRINCIPAL,
    F_TENANT,
    F_EVENT,
    F_SENDER,
    F_RECEIVER,
    F_PAYLOAD,
    F_HANDLED,
    F_DEADLINE,
    F_REPLY_TO,
    F_COUNT
};

static const char *const top_names[F_COUNT] = {"v",         "messageType",   "id",
                                               "timestamp", "contentType",   "contentEncoding",
                                               "traceId",   "correlationId", "principalId",
                                               "tenantId",  "eventName",     "sender",
                                               "receiver",  "payload",       "isHandledError",
                                               "deadline",  "replyTo"};

static const char *const addr_names[4] = {"serviceName", "serviceVersion", "serviceTarget",
                                          "instanceId"};

/* What validate() found: borrowed from the parsed tree. */
typedef struct fields {
    loom_msg_type type;
    const char *type_name;
    const char *id, *trace_id, *correlation_id;
    int64_t timestamp, deadline;
    const char *strs[6]; /* contentType, contentEncoding, principalId, tenantId,
                            eventName, replyTo */
    const char *sender[4], *receiver[4];
    /* Subtrees to detach, each with its parent. */
    cJSON *payload, *payload_parent;
    cJSON *parameter, *parameter_parent;
    cJSON *error_data, *error_data_parent;
    int status;
    const char *error_message;
    bool handled;
} fields;

static loom_err get_address(const cJSON *it, const char *name, const char *out[4], errsink *eb)
{
    if (absent(it))
        return LOOM_OK;
    if (!cJSON_IsObject(it))
        return fail(eb, LOOM_EPARSE, "field '%s': expected an object", name);
    const cJSON *slots[4] = {0};
    char path[16];
    snprintf(path, sizeof path, "%s.", name);
    loom_err e = pick(it, addr_names, 4, slots, path, eb);
    for (int i = 0; i < 4 && !e; i++)
        e = get_str(slots[i], path, addr_names[i], &out[i], eb);
    return e;
}

static loom_err validate(cJSON *root, fields *f, errsink *eb)
{
    loom_err e;
    if (!cJSON_IsObject(root))
        return fail(eb, LOOM_EPARSE, "not a JSON object");
    const cJSON *s[F_COUNT] = {0};
    if ((e = pick(root, top_names, F_COUNT, s, "", eb)))
        return e;

    if (!absent(s[F_V])) {
        if (!cJSON_IsNumber(s[F_V]))
            return fail(eb, LOOM_EPARSE, "field 'v': expected the number %d",
                        LOOM_PROTOCOL_VERSION);
        if (s[F_V]->valuedouble != LOOM_PROTOCOL_VERSION) {
            char v[LOOM__JSON_NUMBER_MAX]; /* not "%g": it follows LC_NUMERIC */
            loom__json_number(v, s[F_V]->valuedouble);
            return fail(eb, LOOM_EPARSE, "unsupported protocol version %s", v);
        }
    }

    const cJSON *t = s[F_TYPE];
    if (absent(t))
        return fail(eb, LOOM_EPARSE, "field 'messageType': missing");
    if (!cJSON_IsString(t) || !t->valuestring)
        return fail(eb, LOOM_EPARSE, "field 'messageType': expected a string");
    const char *tn = t->valuestring;
    if (strcmp(tn, "command") == 0)
        f->type = LOOM_MSG_COMMAND;
    else if (strcmp(tn, "commandSuccessResponse") == 0)
        f->type = LOOM_MSG_SUCCESS;
    else if (strcmp(tn, "commandErrorResponse") == 0)
        f->type = LOOM_MSG_ERROR;
    else if (strcmp(tn, "customMessage") == 0)
        f->type = LOOM_MSG_CUSTOM;
    else if (strncmp(tn, "info", 4) == 0)
        f->type = LOOM_MSG_INFO;
    else {
        char q[44];
        quote(q, sizeof q, tn);
        return fail(eb, LOOM_EPARSE, "field 'messageType': unknown value \"%s\"", q);
    }
    if (strnlen(tn, LOOM_MAX_STRING + 1) > LOOM_MAX_STRING)
        return fail(eb, LOOM_ETOOBIG, "field 'messageType': longer than %d bytes", LOOM_MAX_STRING);
    f->type_name = tn;

    if ((e = get_id(s[F_ID], "id", true, &f->id, eb)) ||
        (e = get_time(s[F_TIMESTAMP], "timestamp", true, &f->timestamp, eb)) ||
        (e = get_time(s[F_DEADLINE], "deadline", false, &f->deadline, eb)) ||
        (e = get_id(s[F_TRACE], "traceId", false, &f->trace_id, eb)) ||
        (e = get_id(s[F_CORRELATION], "correlationId", false, &f->correlation_id, eb)))
        return e;

    static const int str_slots[6] = {F_CONTENT_TYPE, F_CONTENT_ENCODING, F_PRINCIPAL, F_TENANT,
                                     F_EVENT,        F_REPLY_TO};
    for (int i = 0; i < 6; i++)
        if ((e = get_str(s[str_slots[i]], "", top_names[str_slots[i]], &f->strs[i], eb)))
            return e;
    if ((e = get_address(s[F_SENDER], "sender", f->sender, eb)) ||
        (e = get_address(s[F_RECEIVER], "receiver", f->receiver, eb)))
        return e;

    if (!absent(s[F_HANDLED])) {
        if (!cJSON_IsBool(s[F_HANDLED]))
            return fail(eb, LOOM_EPARSE, "field 'isHandledError': expected true or false");
        f->handled = cJSON_IsTrue(s[F_HANDLED]);
    }

    cJSON *payload = (cJSON *)s[F_PAYLOAD];
    switch (f->type) {
    case LOOM_MSG_COMMAND: {
        if (absent(s[F_RECEIVER]))
            return fail(eb, LOOM_EPARSE, "field 'receiver': required for a command");
        for (int i = 0; i < 3; i++)
            if (!f->receiver[i] || !*f->receiver[i])
                return fail(eb, LOOM_EPARSE, "field 'receiver.%s': required for a command",
                            addr_names[i]);
        if (absent(payload))
            break;
        if (!cJSON_IsObject(payload))
            return fail(eb, LOOM_EPARSE, "field 'payload': expected an object");
        static const char *const names[2] = {"payload", "parameter"};
        const cJSON *ps[2] = {0};
        if ((e = pick(payload, names, 2, ps, "payload.", eb)))
            return e;
        if (ps[0]) {
            f->payload = (cJSON *)ps[0];
            f->payload_parent = payload;
        }
        if (!absent(ps[1])) {
            if (!cJSON_IsObject(ps[1]))
                return fail(eb, LOOM_EPARSE, "field 'payload.parameter': expected an object");
            f->parameter = (cJSON *)ps[1];
            f->parameter_parent = payload;
        }
        break;
    }
    case LOOM_MSG_ERROR: {
        if (absent(payload))
            return fail(eb, LOOM_EPARSE, "field 'payload': required for a commandErrorResponse");
        if (!cJSON_IsObject(payload))
            return fail(eb, LOOM_EPARSE, "field 'payload': expected an object");
        static const char *const names[3] = {"status", "message", "data"};
        const cJSON *ps[3] = {0};
        if ((e = pick(payload, names, 3, ps, "payload.", eb)))
            return e;
        double st = cJSON_IsNumber(ps[0]) ? ps[0]->valuedouble : 0;
        if (!(st >= 100 && st <= 599) || (double)(int)st != st)
            return fail(eb, LOOM_EPARSE,
                        "field 'payload.status': expected an integer from 100 "
                        "to 599");
        f->status = (int)st;
        if (!cJSON_IsString(ps[1]) || !ps[1]->valuestring)
            return fail(eb, LOOM_EPARSE, "field 'payload.message': expected a string");
        f->error_message = ps[1]->valuestring;
        if (ps[2]) {
            f->error_data = (cJSON *)ps[2];
            f->error_data_parent = payload;
        }
        break;
    }
    case LOOM_MSG_CUSTOM:
        if (!f->strs[4] || !*f->strs[4])
            return fail(eb, LOOM_EPARSE, "field 'eventName': required for a customMessage");
        /* fall through */
    default:
        if (payload) {
            f->payload = payload;
            f->payload_parent = root;
        }
        break;
    }
    return LOOM_OK;
}

/* Unlinks item from parent in O(1) and makes it a root of its own (without
 * the member name it had in parent). */
static cJSON *detach(cJSON *parent, cJSON *item)
{
    cJSON_DetachItemViaPointer(parent, item);
    if (item->string && !(item->type & cJSON_StringIsConst))
        cJSON_free(item->string);
    item->string = NULL;
    item->type &= ~cJSON_StringIsConst;
    return item;
}

/* Step 3: copies the strings, then moves the payload subtrees out of root. */
static loom_msg *build(const fields *f)
{
    /* Everything but the string arena starts zeroed; the arena is written
     * before it is read (arena_used). */
    loom_msg *m = malloc(sizeof *m);
    if (!m)
        return NULL;
    memset(m, 0, offsetof(loom_msg, arena));
    atomic_init(&m->refs, 1);
    m->type = f->type;
    memcpy(m->id, f->id, LOOM_ID_LEN + 1);
    if (f->trace_id)
        memcpy(m->trace_id, f->trace_id, LOOM_ID_LEN + 1);
    if (f->correlation_id)
        memcpy(m->correlation_id, f->correlation_id, LOOM_ID_LEN + 1);
    m->timestamp = f->timestamp;
    m->deadline = f->deadline;
    m->status = f->status;
    m->handled = f->type == LOOM_MSG_ERROR && f->handled;
    /* Same order as fields.strs. */
    char **dst[6] = {&m->content_type, &m->content_encoding, &m->principal_id,
                     &m->tenant_id,    &m->event_name,       &m->reply_to};
    bool ok = true;
    for (int i = 0; i < 6; i++)
        ok = ok && loom__msg_set(m, dst[i], f->strs[i]) == LOOM_OK;
    ok = ok &&
         loom__msg_set_address(m, &m->sender, f->sender[0], f->sender[1], f->sender[2],
                               f->sender[3]) == LOOM_OK &&
         loom__msg_set_address(m, &m->receiver, f->receiver[0], f->receiver[1], f->receiver[2],
                               f->receiver[3]) == LOOM_OK;
    if (ok && f->type == LOOM_MSG_INFO)
        ok = loom__msg_set(m, &m->info_type, f->type_name) == LOOM_OK;
    if (ok && f->error_message)
        ok = loom__msg_set(m, &m->error_message, f->error_message) == LOOM_OK;
    if (!ok) {
        loom_msg_release(m);
        return NULL;
    }
    /* Nothing can fail from here on. */
    if (f->payload)
        m->payload = detach(f->payload_parent, f->payload);
    if (f->parameter)
        m->parameter = detach(f->parameter_parent, f->parameter);
    if (f->error_data)
        m->error_data = detach(f->error_data_parent, f->error_data);
    return m;
}

loom_err loom_msg_decode(const void *data, size_t len, loom_msg **out, char *errbuf,
                         size_t errbuf_len)
{
    errsink eb = {errbuf, errbuf_len};
    if (errbuf && errbuf_len)
        errbuf[0] = '\0';
    if (!out)
        return fail(&eb, LOOM_EINVAL, "invalid argument");
    *out = NULL;
    if (!data && len)
        return fail(&eb, LOOM_EINVAL, "invalid argument");
    /* Publishers written in C often send the string's terminating NUL too. */
    while (len && ((const char *)data)[len - 1] == '\0')
        len--;
    if (!len)
        return fail(&eb, LOOM_EPARSE, "empty input");

    cJSON *root = NULL;
    loom_err e = loom__json_parse(data, len, LOOM_MAX_NESTING, &root, errbuf, errbuf_len, NULL);
    if (e)
        return e;

    fields f = {0};
    if ((e = validate(root, &f, &eb))) {
        cJSON_Delete(root);
        return e;
    }
    loom_msg *m = build(&f);
    cJSON_Delete(root);
    if (!m)
        return fail(&eb, LOOM_ENOMEM, "out of memory");
    *out = m;
    return LOOM_OK;
}
