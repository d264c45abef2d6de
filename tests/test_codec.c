/* The envelope codec: loom_msg construction, accessors, encode and decode. */
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/json.h"
#include "codec/msg.h"
#include "core/util.h"
#include "support/support.h"

#define ID1 "0123456789abcdef0123456789abcdef"
#define ID2 "fedcba9876543210fedcba9876543210"
#define ID3 "00000000000000000000000000000001"

/* A valid command envelope with every field set; the base of the rejection
 * tests, which change one field at a time. */
static const char *const FULL_CMD =
    "{\"v\":1,\"messageType\":\"command\",\"id\":\"" ID1 "\",\"timestamp\":1700000000123,"
    "\"contentType\":\"application/json\",\"contentEncoding\":\"utf-8\","
    "\"traceId\":\"" ID2 "\",\"correlationId\":\"" ID3 "\",\"principalId\":\"alice\","
    "\"tenantId\":\"acme\",\"eventName\":\"userFetched\","
    "\"sender\":{\"serviceName\":\"web\",\"serviceVersion\":\"2\",\"serviceTarget\":\"page\","
    "\"instanceId\":\"i-1\"},"
    "\"receiver\":{\"serviceName\":\"users\",\"serviceVersion\":\"1\",\"serviceTarget\":\"get\","
    "\"instanceId\":\"i-2\"},"
    "\"payload\":{\"payload\":{\"name\":\"Zoë\",\"n\":[1,2.5,true,null]},"
    "\"parameter\":{\"id\":\"42\"}},"
    "\"isHandledError\":false,\"deadline\":1700000030123,\"replyTo\":\"loom/reply/i-1\"}";

static const char *const MIN_ERR =
    "{\"messageType\":\"commandErrorResponse\",\"id\":\"" ID1 "\",\"timestamp\":1,"
    "\"payload\":{\"status\":404,\"message\":\"no such user\"},\"isHandledError\":true}";

static const char *const MIN_EVT = "{\"messageType\":\"customMessage\",\"id\":\"" ID1
                                   "\",\"timestamp\":1,\"eventName\":\"userCreated\"}";

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */

/* Decodes text from an exact-size heap copy (no NUL after it), so ASan sees
 * any read past len. */
static loom_err decode_exact(const char *text, size_t len, loom_msg **out, char *err, size_t errlen)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    loom_err e = loom_msg_decode(copy, len, out, err, errlen);
    free(copy);
    return e;
}

static loom_msg *must_decode(const char *text)
{
    loom_msg *m = NULL;
    char err[256] = "x";
    loom_err e = decode_exact(text, strlen(text), &m, err, sizeof err);
    if (e != LOOM_OK)
        fail_msg("decode failed (%s): %s\n  input: %s", loom_strerror(e), err, text);
    assert_string_equal(err, "");
    assert_non_null(m);
    return m;
}

static void expect_reject_len(const char *text, size_t len, loom_err code, const char *needle)
{
    loom_msg *m = (loom_msg *)1;
    char err[256] = "";
    loom_err e = decode_exact(text, len, &m, err, sizeof err);
    if (e != code || !strstr(err, needle))
        fail_msg("expected %s containing \"%s\", got %s \"%s\"\n  input: %.300s",
                 loom_strerror(code), needle, loom_strerror(e), err, text);
    assert_null(m);
    assert_null(strchr(err, '\n'));
}

static void expect_reject(const char *text, loom_err code, const char *needle)
{
    expect_reject_len(text, strlen(text), code, needle);
}

/* Sets (or with value_json NULL removes) one member of base, addressed as
 * "key" or "obj.key", and returns the printed result (free it). */
static char *with_field(const char *base, const char *path, const char *value_json)
{
    cJSON *root = t_json(base);
    cJSON *obj = root;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", path);
    char *key = buf, *dot = strchr(buf, '.');
    if (dot) {
        *dot = '\0';
        obj = cJSON_GetObjectItemCaseSensitive(root, buf);
        assert_non_null(obj);
        key = dot + 1;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (value_json)
        cJSON_AddItemToObject(obj, key, t_json(value_json));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    assert_non_null(s);
    return s;
}

static void reject_field(const char *base, const char *path, const char *value_json, loom_err code,
                         const char *needle)
{
    char *s = with_field(base, path, value_json);
    expect_reject(s, code, needle);
    free(s);
}

static void accept_field(const char *base, const char *path, const char *value_json)
{
    char *s = with_field(base, path, value_json);
    loom_msg_release(must_decode(s));
    free(s);
}

static char *encode(const loom_msg *m, size_t *len)
{
    char *out = NULL;
    size_t n = 0;
    assert_int_equal(loom_msg_encode(m, &out, &n), LOOM_OK);
    assert_non_null(out);
    assert_int_equal(strlen(out), n);
    if (len)
        *len = n;
    return out;
}

static int streq_null(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int json_eq_null(const cJSON *a, const cJSON *b)
{
    return (!a && !b) || (a && b && cJSON_Compare(a, b, true));
}

static void assert_addr_equal(const loom_address *a, const loom_address *b)
{
    assert_true(streq_null(a->service, b->service));
    assert_true(streq_null(a->version, b->version));
    assert_true(streq_null(a->target, b->target));
    assert_true(streq_null(a->instance, b->instance));
}

/* Every field of two messages is equal. */
static void assert_msg_equal(const loom_msg *a, const loom_msg *b)
{
    assert_int_equal(a->type, b->type);
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->trace_id, b->trace_id);
    assert_string_equal(a->correlation_id, b->correlation_id);
    assert_int_equal(a->timestamp, b->timestamp);
    assert_int_equal(a->deadline, b->deadline);
    assert_true(streq_null(a->content_type, b->content_type));
    assert_true(streq_null(a->content_encoding, b->content_encoding));
    assert_true(streq_null(a->principal_id, b->principal_id));
    assert_true(streq_null(a->tenant_id, b->tenant_id));
    assert_true(streq_null(a->event_name, b->event_name));
    assert_true(streq_null(a->reply_to, b->reply_to));
    assert_true(streq_null(a->info_type, b->info_type));
    assert_addr_equal(&a->sender, &b->sender);
    assert_addr_equal(&a->receiver, &b->receiver);
    assert_true(json_eq_null(a->payload, b->payload));
    assert_true(json_eq_null(a->parameter, b->parameter));
    assert_int_equal(a->status, b->status);
    assert_true(streq_null(a->error_message, b->error_message));
    assert_true(json_eq_null(a->error_data, b->error_data));
    assert_int_equal(a->handled, b->handled);
}

/* Encodes m, decodes the text, checks every field survived and that the
 * second encoding is byte-identical to the first. Returns the text. */
static char *round_trip(const loom_msg *m)
{
    size_t n1, n2;
    char *s1 = encode(m, &n1);
    loom_msg *d = must_decode(s1);
    assert_msg_equal(m, d);
    char *s2 = encode(d, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(s1, s2, n1);
    free(s2);
    loom_msg_release(d);
    return s1;
}

/* Sets every common envelope field, with strings that need escaping. */
static void fill_common(loom_msg *m)
{
    memcpy(m->trace_id, ID2, 33);
    memcpy(m->correlation_id, ID3, 33);
    m->deadline = m->timestamp + 30000;
    assert_int_equal(loom__msg_set(m, &m->content_type, "application/json"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->content_encoding, "utf-8"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->principal_id, "al\"ice\\ \x01\x1f\t\n"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->tenant_id, "acmé 🚀"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->reply_to, "loom/reply/i-1"), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->sender, "web", "2", "page", "i-1"), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "users", "1", "get", "i-2"), LOOM_OK);
}

/* ------------------------------------------------------------------------ */
/* round trips                                                               */

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Ids are 32 lowercase hex digits, each digit uniformly used in every
 * position, and unique. */
static void test_random_ids(void **state)
{
    (void)state;
    enum { N = 4096 };
    static char ids[N][33];
    unsigned seen[32][16] = {{0}};
    for (int i = 0; i < N; i++) {
        loom__random_id(ids[i]);
        assert_true(loom__is_id(ids[i]));
        for (int k = 0; k < 32; k++)
            seen[k][ids[i][k] <= '9' ? ids[i][k] - '0' : ids[i][k] - 'a' + 10]++;
    }
    for (int k = 0; k < 32; k++)
        for (int d = 0; d < 16; d++) /* expected 256 each; 5 sigma is 78 */
            if (seen[k][d] < 256 - 100 || seen[k][d] > 256 + 100)
                fail_msg("digit %x at position %d: %u of %d", d, k, seen[k][d], N);
    qsort(ids, N, sizeof ids[0], cmp_id);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
}

static void test_roundtrip_command(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    assert_non_null(m);
    fill_common(m);
    assert_int_equal(loom__msg_set(m, &m->event_name, "userFetched"), LOOM_OK);
    m->payload = t_json("{\"name\":\"Zoë\",\"list\":[1,-2,3.25,1e-7,true,false,null,\"\\u0001\"],"
                        "\"deep\":{\"a\":{\"b\":[[]]}},\"empty\":{}}");
    m->parameter = t_json("{\"id\":\"42\",\"q\":\"a b\"}");
    char *s = round_trip(m);
    /* Field names on the wire are PURISTA's. */
    cJSON *j = t_json(s);
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "v"), "1"));
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "messageType"), "\"command\""));
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "receiver"),
                          "{\"serviceName\":\"users\",\"serviceVersion\":\"1\","
                          "\"serviceTarget\":\"get\",\"instanceId\":\"i-2\"}"));
    assert_true(t_json_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "payload"), "parameter"),
                          "{\"id\":\"42\",\"q\":\"a b\"}"));
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "traceId"), "\"" ID2 "\""));
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "correlationId"), "\"" ID3 "\""));
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "replyTo"), "\"loom/reply/i-1\""));
    assert_int_equal((int64_t)cJSON_GetObjectItem(j, "deadline")->valuedouble, m->deadline);
    assert_null(cJSON_GetObjectItem(j, "isHandledError"));
    cJSON_Delete(j);
    free(s);
    loom_msg_release(m);
}

static void test_roundtrip_command_empty_payload(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "users", "1", "get", NULL), LOOM_OK);
    char *s = round_trip(m);
    cJSON *j = t_json(s);
    assert_true(t_json_eq(cJSON_GetObjectItem(j, "payload"), "{}"));
    cJSON_Delete(j);
    free(s);
    /* Only the payload, then only the parameter. */
    m->payload = t_json("null");
    free(round_trip(m));
    cJSON_Delete(m->payload);
    m->payload = NULL;
    m->parameter = t_json("{}");
    free(round_trip(m));
    loom_msg_release(m);
}

static void test_roundtrip_success(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_SUCCESS);
    fill_common(m);
    m->payload = t_json("[{\"id\":1},{\"id\":2}]");
    free(round_trip(m));
    /* Any JSON value is a result. */
    const char *vals[] = {"\"text\"", "0", "-12.5", "true", "false", "null", "{}", "[]"};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        cJSON_Delete(m->payload);
        m->payload = t_json(vals[i]);
        free(round_trip(m));
    }
    cJSON_Delete(m->payload);
    m->payload = NULL;
    char *s = round_trip(m);
    assert_null(strstr(s, "\"payload\""));
    free(s);
    loom_msg_release(m);
}

static void test_roundtrip_error(void **state)
{
    (void)state;
    for (int handled = 0; handled < 2; handled++) {
        loom_msg *m = loom__msg_new(LOOM_MSG_ERROR);
        fill_common(m);
        m->status = handled ? 422 : 500;
        m->handled = handled;
        assert_int_equal(loom__msg_set(m, &m->error_message, "bad \"input\"\n"), LOOM_OK);
        m->error_data = handled ? t_json("{\"errors\":[{\"path\":\"/a\"}]}") : NULL;
        char *s = round_trip(m);
        cJSON *j = t_json(s);
        assert_true(
            t_json_eq(cJSON_GetObjectItem(j, "isHandledError"), handled ? "true" : "false"));
        assert_true(t_json_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "payload"), "status"),
                              handled ? "422" : "500"));
        cJSON_Delete(j);
        free(s);
        loom_msg_release(m);
    }
}

static void test_roundtrip_custom(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    fill_common(m);
    assert_int_equal(loom__msg_set(m, &m->event_name, "user/created+#$%"), LOOM_OK);
    m->payload = t_json("{\"id\":7}");
    free(round_trip(m));
    cJSON_Delete(m->payload);
    m->payload = NULL;
    free(round_trip(m));
    loom_msg_release(m);
}

static void test_roundtrip_info(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_INFO);
    fill_common(m);
    assert_int_equal(loom__msg_set(m, &m->info_type, "infoServiceReady"), LOOM_OK);
    m->payload = t_json("{\"commands\":[\"get\"]}");
    char *s = round_trip(m);
    assert_non_null(strstr(s, "\"messageType\":\"infoServiceReady\""));
    free(s);
    loom_msg_release(m);

    /* Without an info_type the type name is "info", which decodes as one. */
    m = loom__msg_new(LOOM_MSG_INFO);
    s = encode(m, NULL);
    loom_msg *d = must_decode(s);
    assert_int_equal(loom_msg_type_of(d), LOOM_MSG_INFO);
    assert_string_equal(d->info_type, "info");
    loom_msg_release(d);
    free(s);
    loom_msg_release(m);
}

static void test_encode_minimal_omits_absent(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_SUCCESS);
    char *s = encode(m, NULL);
    char expect[200];
    snprintf(expect, sizeof expect,
             "{\"v\":1,\"messageType\":\"commandSuccessResponse\",\"id\":\"%s\","
             "\"timestamp\":%lld}",
             m->id, (long long)m->timestamp);
    assert_string_equal(s, expect);
    free(s);
    /* Empty strings are present values; "" ids are absent. */
    assert_int_equal(loom__msg_set(m, &m->tenant_id, ""), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->sender, "svc", NULL, NULL, NULL), LOOM_OK);
    s = encode(m, NULL);
    assert_non_null(strstr(s, ",\"tenantId\":\"\""));
    assert_non_null(strstr(s, ",\"sender\":{\"serviceName\":\"svc\"}"));
    assert_null(strstr(s, "traceId"));
    assert_null(strstr(s, "deadline"));
    free(s);
    loom_msg_release(m);
}

static void test_encode_escapes_strings(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_SUCCESS);
    assert_int_equal(loom__msg_set(m, &m->principal_id, "a\"b\\c\x01\x1f\x7f/é"), LOOM_OK);
    char *s = encode(m, NULL);
    assert_non_null(strstr(s, "\"principalId\":\"a\\\"b\\\\c\\u0001\\u001f\x7f/é\""));
    loom_msg *d = must_decode(s);
    assert_string_equal(loom_msg_principal_id(d), "a\"b\\c\x01\x1f\x7f/é");
    loom_msg_release(d);
    free(s);
    loom_msg_release(m);
}

static void test_encode_large_payload(void **state)
{
    (void)state;
    /* Larger than the encoder's first buffer: exercises the fallback. */
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_int_equal(loom__msg_set(m, &m->event_name, "big"), LOOM_OK);
    m->payload = cJSON_CreateArray();
    char *big = malloc(100001);
    memset(big, 'x', 100000);
    big[100000] = '\0';
    for (int i = 0; i < 5; i++)
        cJSON_AddItemToArray(m->payload, cJSON_CreateString(big));
    for (int i = 0; i < 1000; i++)
        cJSON_AddItemToArray(m->payload, cJSON_CreateNumber(i));
    size_t n;
    char *s = encode(m, &n);
    assert_true(n > 500000);
    loom_msg *d = must_decode(s);
    assert_msg_equal(m, d);
    loom_msg_release(d);
    free(s);
    free(big);
    loom_msg_release(m);
}

static void test_encode_rejects_what_decode_would(void **state)
{
    (void)state;
    char *out = (char *)1;
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    /* No receiver. */
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    assert_null(out);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "users", "1", "get", NULL), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_OK);
    free(out);
    /* Bad ids and times. */
    m->trace_id[0] = 'X';
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    m->trace_id[0] = '\0';
    m->timestamp = -1;
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    m->timestamp = 1;
    m->deadline = (int64_t)1 << 53;
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    m->deadline = 0;
    /* A string over the limit, and invalid UTF-8. */
    char *longs = malloc(LOOM_MAX_STRING + 2);
    memset(longs, 'a', LOOM_MAX_STRING + 1);
    longs[LOOM_MAX_STRING + 1] = '\0';
    assert_int_equal(loom__msg_set(m, &m->tenant_id, longs), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_ETOOBIG);
    longs[LOOM_MAX_STRING] = '\0'; /* exactly the limit is fine */
    assert_int_equal(loom__msg_set(m, &m->tenant_id, longs), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_OK);
    free(out);
    free(longs);
    assert_int_equal(loom__msg_set(m, &m->tenant_id, "\xc3\x28"), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    assert_int_equal(loom__msg_set(m, &m->tenant_id, NULL), LOOM_OK);
    /* Payload: invalid UTF-8 in a value or a key; a parameter that is not
     * an object. */
    m->payload = t_json("{\"a\":\"ok\"}");
    cJSON_AddStringToObject(m->payload, "b", "\xed\xa0\x80");
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    cJSON_Delete(m->payload);
    m->payload = cJSON_CreateObject();
    cJSON_AddNumberToObject(m->payload, "\xff", 1);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    cJSON_Delete(m->payload);
    m->payload = NULL;
    m->parameter = t_json("[1]");
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    cJSON_Delete(m->parameter);
    m->parameter = NULL;
    loom_msg_release(m);

    /* Events need a name, errors a status in range, info types "info*". */
    m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    loom_msg_release(m);
    m = loom__msg_new(LOOM_MSG_ERROR);
    m->status = 99;
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    m->status = 600;
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    m->status = 599;
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_OK);
    free(out);
    loom_msg_release(m);
    m = loom__msg_new(LOOM_MSG_INFO);
    assert_int_equal(loom__msg_set(m, &m->info_type, "command"), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    loom_msg_release(m);
    m = loom__msg_new((loom_msg_type)12345);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_EINVAL);
    loom_msg_release(m);
    assert_int_equal(loom_msg_encode(NULL, &out, NULL), LOOM_EINVAL);
}

static cJSON *nest(int levels)
{
    cJSON *v = cJSON_CreateNumber(1);
    for (int i = 0; i < levels; i++) {
        cJSON *a = cJSON_CreateArray();
        cJSON_AddItemToArray(a, v);
        v = a;
    }
    return v;
}

static void test_encode_depth_limit(void **state)
{
    (void)state;
    char *out = NULL;
    /* An event payload gets LOOM_MAX_NESTING - 1 levels (the envelope is
     * one); a command's LOOM_MAX_NESTING - 2. What encodes also decodes. */
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_int_equal(loom__msg_set(m, &m->event_name, "e"), LOOM_OK);
    m->payload = nest(LOOM_MAX_NESTING - 1);
    free(round_trip(m));
    cJSON_Delete(m->payload);
    m->payload = nest(LOOM_MAX_NESTING);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_ETOOBIG);
    cJSON_Delete(m->payload);
    m->payload = nest(5000); /* the check stops at the limit */
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_ETOOBIG);
    loom_msg_release(m);

    m = loom__msg_new(LOOM_MSG_COMMAND);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "s", "1", "c", NULL), LOOM_OK);
    m->payload = nest(LOOM_MAX_NESTING - 2);
    free(round_trip(m));
    cJSON_Delete(m->payload);
    m->payload = nest(LOOM_MAX_NESTING - 1);
    assert_int_equal(loom_msg_encode(m, &out, NULL), LOOM_ETOOBIG);
    loom_msg_release(m);
}

/* ------------------------------------------------------------------------ */
/* decoder: accepted inputs                                                  */

static void test_decode_full_fields(void **state)
{
    (void)state;
    loom_msg *m = must_decode(FULL_CMD);
    assert_int_equal(loom_msg_type_of(m), LOOM_MSG_COMMAND);
    assert_string_equal(loom_msg_id(m), ID1);
    assert_string_equal(loom_msg_trace_id(m), ID2);
    assert_string_equal(loom_msg_correlation_id(m), ID3);
    assert_int_equal(loom_msg_timestamp(m), 1700000000123LL);
    assert_int_equal(loom_msg_deadline(m), 1700000030123LL);
    assert_string_equal(m->content_type, "application/json");
    assert_string_equal(m->content_encoding, "utf-8");
    assert_string_equal(loom_msg_principal_id(m), "alice");
    assert_string_equal(loom_msg_tenant_id(m), "acme");
    assert_string_equal(loom_msg_event_name(m), "userFetched");
    assert_string_equal(loom_msg_reply_to(m), "loom/reply/i-1");
    const loom_address *s = loom_msg_sender(m), *r = loom_msg_receiver(m);
    assert_string_equal(s->service, "web");
    assert_string_equal(s->version, "2");
    assert_string_equal(s->target, "page");
    assert_string_equal(s->instance, "i-1");
    assert_string_equal(r->service, "users");
    assert_string_equal(r->version, "1");
    assert_string_equal(r->target, "get");
    assert_string_equal(r->instance, "i-2");
    assert_true(t_json_eq(loom_msg_payload(m), "{\"name\":\"Zoë\",\"n\":[1,2.5,true,null]}"));
    assert_true(t_json_eq(loom_msg_parameter(m), "{\"id\":\"42\"}"));
    /* Detached, not copied: each subtree is a root of its own. */
    assert_null(m->payload->next);
    assert_null(m->payload->prev);
    assert_null(m->payload->string);
    assert_null(m->parameter->string);
    assert_int_equal(loom_msg_status(m), 0);
    assert_null(loom_msg_error(m));
    assert_false(loom_msg_is_handled_error(m));
    loom_msg_release(m);
}

static void test_decode_minimal_and_lenient(void **state)
{
    (void)state;
    /* Absent v, null optional fields, unknown fields, whitespace, BOM. */
    loom_msg *m =
        must_decode(" \r\n\t{\"messageType\":\"customMessage\",\"id\":\"" ID1 "\",\"timestamp\":0,"
                    "\"eventName\":\"e\",\"traceId\":null,\"principalId\":null,\"sender\":null,"
                    "\"deadline\":null,\"future\":{\"x\":[1,2]},\"payload\":[1]} \n");
    assert_int_equal(loom_msg_type_of(m), LOOM_MSG_CUSTOM);
    assert_null(loom_msg_trace_id(m));
    assert_null(loom_msg_correlation_id(m));
    assert_null(loom_msg_principal_id(m));
    assert_null(loom_msg_sender(m)->service);
    assert_int_equal(loom_msg_deadline(m), 0);
    assert_int_equal(loom_msg_timestamp(m), 0);
    assert_true(t_json_eq(loom_msg_payload(m), "[1]"));
    loom_msg_release(m);

    m = must_decode("\xEF\xBB\xBF{\"messageType\":\"infoServiceDrain\",\"id\":\"" ID1
                    "\",\"timestamp\":5, \"v\" : 1.0}");
    assert_int_equal(loom_msg_type_of(m), LOOM_MSG_INFO);
    assert_string_equal(m->info_type, "infoServiceDrain");
    assert_null(loom_msg_payload(m));
    loom_msg_release(m);

    /* Error: data optional; isHandledError optional (false). */
    m = must_decode("{\"messageType\":\"commandErrorResponse\",\"id\":\"" ID1
                    "\",\"timestamp\":1,\"payload\":{\"status\":503,\"message\":\"\"}}");
    assert_int_equal(loom_msg_status(m), 503);
    assert_string_equal(loom_msg_error(m), "");
    assert_null(loom_msg_error_data(m));
    assert_false(loom_msg_is_handled_error(m));
    loom_msg_release(m);

    /* Largest timestamp accepted: 2^53 - 1; numbers in exponent form. */
    m = must_decode("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                    "\",\"timestamp\":9007199254740991,\"deadline\":1.7e12}");
    assert_int_equal(loom_msg_timestamp(m), 9007199254740991LL);
    assert_int_equal(loom_msg_deadline(m), 1700000000000LL);
    loom_msg_release(m);

    /* Valid multi-byte UTF-8 everywhere, strings exactly at the limit. */
    char *big = malloc(LOOM_MAX_STRING + 1);
    memset(big, 'a', LOOM_MAX_STRING);
    big[LOOM_MAX_STRING] = '\0';
    char json[2048];
    snprintf(json, sizeof json,
             "{\"messageType\":\"customMessage\",\"id\":\"" ID1 "\",\"timestamp\":1,"
             "\"eventName\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\","
             "\"tenantId\":\"%s\"}",
             big);
    m = must_decode(json);
    assert_string_equal(loom_msg_event_name(m), "é€😀\xf4\x8f\xbf\xbf");
    assert_int_equal(strlen(loom_msg_tenant_id(m)), LOOM_MAX_STRING);
    loom_msg_release(m);
    free(big);
}

static void test_decode_command_payload_shapes(void **state)
{
    (void)state;
    /* absent, null, {}, only payload, parameter null */
    const char *shapes[] = {NULL,
                            "null",
                            "{}",
                            "{\"payload\":[1]}",
                            "{\"parameter\":null}",
                            "{\"payload\":null,\"parameter\":{},\"extra\":1}"};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        char *s = with_field(FULL_CMD, "payload", shapes[i]);
        loom_msg *m = must_decode(s);
        if (i == 3)
            assert_true(t_json_eq(loom_msg_payload(m), "[1]"));
        if (i == 5) {
            assert_true(cJSON_IsNull(loom_msg_payload(m)));
            assert_true(t_json_eq(loom_msg_parameter(m), "{}"));
        } else {
            assert_null(loom_msg_parameter(m));
        }
        if (i < 3)
            assert_null(loom_msg_payload(m));
        loom_msg_release(m);
        free(s);
    }
}

/* ------------------------------------------------------------------------ */
/* decoder: one test per rejection rule                                      */

static void test_reject_not_object(void **state)
{
    (void)state;
    expect_reject("[1,2]", LOOM_EPARSE, "not a JSON object");
    expect_reject("\"command\"", LOOM_EPARSE, "not a JSON object");
    expect_reject("42", LOOM_EPARSE, "not a JSON object");
    expect_reject("null", LOOM_EPARSE, "not a JSON object");
}

static void test_reject_malformed_json(void **state)
{
    (void)state;
    expect_reject("", LOOM_EPARSE, "empty input");
    expect_reject("   ", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\":", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\" 1}", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\":1,}", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\":tru}", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\":\"x\\", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{\"a\":\"\\ud800\"}", LOOM_EPARSE, "malformed JSON near byte");
    expect_reject("{} {}", LOOM_EPARSE, "malformed JSON near byte 3");
    expect_reject("{}x", LOOM_EPARSE, "malformed JSON near byte 2");
}

static void test_reject_version(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "v", "2", LOOM_EPARSE, "unsupported protocol version 2");
    reject_field(FULL_CMD, "v", "0", LOOM_EPARSE, "unsupported protocol version 0");
    reject_field(FULL_CMD, "v", "\"1\"", LOOM_EPARSE, "field 'v'");
    accept_field(FULL_CMD, "v", NULL);
}

static void test_reject_message_type(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "messageType", NULL, LOOM_EPARSE, "field 'messageType': missing");
    reject_field(FULL_CMD, "messageType", "1", LOOM_EPARSE, "field 'messageType'");
    reject_field(FULL_CMD, "messageType", "\"foo\"", LOOM_EPARSE,
                 "field 'messageType': unknown value \"foo\"");
    reject_field(FULL_CMD, "messageType", "\"Command\"", LOOM_EPARSE, "unknown value");
    reject_field(FULL_CMD, "messageType", "\"\"", LOOM_EPARSE, "unknown value \"\"");
    /* The echoed value is cut and kept on one line. */
    reject_field(FULL_CMD, "messageType",
                 "\"a\\nbcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz\"", LOOM_EPARSE,
                 "unknown value \"a?bcdefghij");
}

static void test_reject_id(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "id", NULL, LOOM_EPARSE, "field 'id': missing");
    const char *bad[] = {"\"0123456789ABCDEF0123456789abcdef\"",
                         "\"0123456789abcdef\"",
                         "\"0123456789abcdef0123456789abcdef0\"",
                         "\"0123456789abcdeg0123456789abcdef\"",
                         "42",
                         "{}",
                         "\"\""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        reject_field(FULL_CMD, "id", bad[i], LOOM_EPARSE,
                     "field 'id': expected 32 lowercase hex characters");
}

static void test_reject_timestamp(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "timestamp", NULL, LOOM_EPARSE, "field 'timestamp': missing");
    const char *bad[] = {"-1", "1.5", "\"1700000000000\"", "1e300", "-0.5", "true", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        reject_field(FULL_CMD, "timestamp", bad[i], LOOM_EPARSE, "field 'timestamp': expected");
    /* 2^53 (written by hand: cJSON's printer would round it), and a number
     * cJSON turns into infinity. */
    expect_reject("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                  "\",\"timestamp\":9007199254740992}",
                  LOOM_EPARSE, "field 'timestamp'");
    expect_reject("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                  "\",\"timestamp\":1e999}",
                  LOOM_EPARSE, "not finite");
}

static void test_reject_deadline(void **state)
{
    (void)state;
    const char *bad[] = {"-1", "0.25", "\"soon\"", "1e20", "{}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        reject_field(FULL_CMD, "deadline", bad[i], LOOM_EPARSE, "field 'deadline': expected");
    accept_field(FULL_CMD, "deadline", NULL);
    accept_field(FULL_CMD, "deadline", "0");
}

static void test_reject_trace_and_correlation_ids(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "traceId", "\"abc\"", LOOM_EPARSE,
                 "field 'traceId': expected 32 lowercase hex characters");
    reject_field(FULL_CMD, "traceId", "7", LOOM_EPARSE, "field 'traceId'");
    reject_field(FULL_CMD, "correlationId", "\"\"", LOOM_EPARSE,
                 "field 'correlationId': expected 32 lowercase hex characters");
    reject_field(FULL_CMD, "correlationId", "\"FEDCBA9876543210FEDCBA9876543210\"", LOOM_EPARSE,
                 "field 'correlationId'");
}

static void test_reject_string_fields(void **state)
{
    (void)state;
    const char *fields[] = {"contentType", "contentEncoding", "principalId",
                            "tenantId",    "eventName",       "replyTo"};
    char *big = malloc(LOOM_MAX_STRING + 4);
    big[0] = '"';
    memset(big + 1, 'a', LOOM_MAX_STRING + 1);
    strcpy(big + LOOM_MAX_STRING + 2, "\"");
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "field '%s': expected a string", fields[i]);
        reject_field(FULL_CMD, fields[i], "5", LOOM_EPARSE, needle);
        reject_field(FULL_CMD, fields[i], "{}", LOOM_EPARSE, needle);
        snprintf(needle, sizeof needle, "field '%s': longer than 1024 bytes", fields[i]);
        reject_field(FULL_CMD, fields[i], big, LOOM_ETOOBIG, needle);
    }
    free(big);
}

static void test_reject_addresses(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "sender", "\"web\"", LOOM_EPARSE, "field 'sender': expected an object");
    reject_field(FULL_CMD, "receiver", "[]", LOOM_EPARSE, "field 'receiver': expected an object");
    const char *names[] = {"serviceName", "serviceVersion", "serviceTarget", "instanceId"};
    for (int i = 0; i < 4; i++) {
        char path[64], needle[80];
        snprintf(path, sizeof path, "sender.%s", names[i]);
        snprintf(needle, sizeof needle, "field 'sender.%s': expected a string", names[i]);
        reject_field(FULL_CMD, path, "1", LOOM_EPARSE, needle);
        snprintf(path, sizeof path, "receiver.%s", names[i]);
        snprintf(needle, sizeof needle, "field 'receiver.%s': expected a string", names[i]);
        reject_field(FULL_CMD, path, "true", LOOM_EPARSE, needle);
    }
    char *big = malloc(LOOM_MAX_STRING + 4);
    big[0] = '"';
    memset(big + 1, 'a', LOOM_MAX_STRING + 1);
    strcpy(big + LOOM_MAX_STRING + 2, "\"");
    reject_field(FULL_CMD, "receiver.instanceId", big, LOOM_ETOOBIG,
                 "field 'receiver.instanceId': longer than");
    free(big);
    /* Unknown members of an address are ignored. */
    accept_field(FULL_CMD, "sender.region", "\"eu\"");
}

static void test_reject_command_without_receiver(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "receiver", NULL, LOOM_EPARSE,
                 "field 'receiver': required for a command");
    reject_field(FULL_CMD, "receiver.serviceName", NULL, LOOM_EPARSE,
                 "field 'receiver.serviceName': required for a command");
    reject_field(FULL_CMD, "receiver.serviceVersion", "\"\"", LOOM_EPARSE,
                 "field 'receiver.serviceVersion': required for a command");
    reject_field(FULL_CMD, "receiver.serviceTarget", "null", LOOM_EPARSE,
                 "field 'receiver.serviceTarget': required for a command");
    accept_field(FULL_CMD, "receiver.instanceId", NULL);
    /* Other types need no receiver. */
    accept_field(MIN_EVT, "receiver", NULL);
}

static void test_reject_command_payload(void **state)
{
    (void)state;
    reject_field(FULL_CMD, "payload", "[]", LOOM_EPARSE, "field 'payload': expected an object");
    reject_field(FULL_CMD, "payload", "\"x\"", LOOM_EPARSE, "field 'payload'");
    reject_field(FULL_CMD, "payload.parameter", "[]", LOOM_EPARSE,
                 "field 'payload.parameter': expected an object");
    reject_field(FULL_CMD, "payload.parameter", "\"id=1\"", LOOM_EPARSE,
                 "field 'payload.parameter'");
}

static void test_reject_error_payload(void **state)
{
    (void)state;
    reject_field(MIN_ERR, "payload", NULL, LOOM_EPARSE,
                 "field 'payload': required for a commandErrorResponse");
    reject_field(MIN_ERR, "payload", "\"oops\"", LOOM_EPARSE,
                 "field 'payload': expected an object");
    const char *bad[] = {NULL, "99", "600", "404.5", "\"404\"", "null", "-500", "1e9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        reject_field(MIN_ERR, "payload.status", bad[i], LOOM_EPARSE,
                     "field 'payload.status': expected an integer from 100 to 599");
    accept_field(MIN_ERR, "payload.status", "100");
    accept_field(MIN_ERR, "payload.status", "599");
    reject_field(MIN_ERR, "payload.message", NULL, LOOM_EPARSE,
                 "field 'payload.message': expected a string");
    reject_field(MIN_ERR, "payload.message", "42", LOOM_EPARSE, "field 'payload.message'");
    accept_field(MIN_ERR, "payload.data", "{\"any\":[1]}");
}

static void test_reject_is_handled_error(void **state)
{
    (void)state;
    reject_field(MIN_ERR, "isHandledError", "1", LOOM_EPARSE, "field 'isHandledError'");
    reject_field(MIN_ERR, "isHandledError", "\"true\"", LOOM_EPARSE, "field 'isHandledError'");
    accept_field(MIN_ERR, "isHandledError", NULL);
}

static void test_reject_event_without_name(void **state)
{
    (void)state;
    reject_field(MIN_EVT, "eventName", NULL, LOOM_EPARSE,
                 "field 'eventName': required for a customMessage");
    reject_field(MIN_EVT, "eventName", "\"\"", LOOM_EPARSE, "field 'eventName'");
}

static void test_reject_duplicate_keys(void **state)
{
    (void)state;
    expect_reject("{\"messageType\":\"customMessage\",\"id\":\"" ID1 "\",\"id\":\"" ID2
                  "\",\"timestamp\":1,\"eventName\":\"e\"}",
                  LOOM_EPARSE, "field 'id': duplicate key");
    expect_reject("{\"messageType\":\"commandErrorResponse\",\"id\":\"" ID1
                  "\",\"timestamp\":1,\"payload\":{\"status\":400,\"status\":500,"
                  "\"message\":\"\"}}",
                  LOOM_EPARSE, "field 'payload.status': duplicate key");
    /* Unknown keys may repeat. */
    loom_msg_release(must_decode("{\"x\":1,\"x\":2,\"messageType\":\"customMessage\",\"id\":\"" ID1
                                 "\",\"timestamp\":1,\"eventName\":\"e\"}"));
}

/* ------------------------------------------------------------------------ */
/* decoder: bytes                                                            */

/* Puts bad (n bytes) inside the eventName string of an event envelope and
 * expects the UTF-8 error at that offset. */
static void bad_utf8(const char *bad, size_t n, size_t at_offset)
{
    const char *pre =
        "{\"messageType\":\"customMessage\",\"id\":\"" ID1 "\",\"timestamp\":1,\"eventName\":\"ab";
    const char *post = "\"}";
    char buf[256];
    size_t pl = strlen(pre);
    memcpy(buf, pre, pl);
    memcpy(buf + pl, bad, n);
    memcpy(buf + pl + n, post, strlen(post));
    char needle[64];
    snprintf(needle, sizeof needle, "invalid UTF-8 at byte %zu", pl + at_offset);
    expect_reject_len(buf, pl + n + strlen(post), LOOM_EPARSE, needle);
}

static void test_reject_invalid_utf8(void **state)
{
    (void)state;
    bad_utf8("\x80", 1, 0); /* stray continuation */
    bad_utf8("\xbf", 1, 0);
    bad_utf8("\xc0\xaf", 2, 0);         /* overlong '/' */
    bad_utf8("\xc1\xbf", 2, 0);         /* overlong */
    bad_utf8("\xe0\x80\xaf", 3, 0);     /* overlong, 3 bytes */
    bad_utf8("\xe0\x9f\xbf", 3, 0);     /* overlong U+07FF */
    bad_utf8("\xf0\x80\x80\xaf", 4, 0); /* overlong, 4 bytes */
    bad_utf8("\xf0\x8f\xbf\xbf", 4, 0); /* overlong U+FFFF */
    bad_utf8("\xed\xa0\x80", 3, 0);     /* surrogate U+D800 */
    bad_utf8("\xed\xbf\xbf", 3, 0);     /* surrogate U+DFFF */
    bad_utf8("\xf4\x90\x80\x80", 4, 0); /* U+110000 */
    bad_utf8("\xf5\x80\x80\x80", 4, 0); /* lead byte beyond the range */
    bad_utf8("\xfe", 1, 0);
    bad_utf8("\xff", 1, 0);
    bad_utf8("x\xc3", 2, 1);        /* truncated before the quote */
    bad_utf8("\xe2\x82", 2, 0);     /* truncated 3-byte sequence */
    bad_utf8("\xf0\x9f\x98", 3, 0); /* truncated 4-byte sequence */
    bad_utf8("\xc3\xa9\xc3", 3, 2); /* valid é, then a bad one */
    /* Outside strings too, and truncated at the very end of the input. */
    expect_reject("{\"a\":1}\xc3", LOOM_EPARSE, "invalid UTF-8 at byte 7");
    expect_reject_len("{\"a\":\"\xe2\x82", 8, LOOM_EPARSE, "invalid UTF-8 at byte 6");
    expect_reject("\xef\xbb", LOOM_EPARSE, "invalid UTF-8 at byte 0");
}

static void test_reject_control_and_escapes(void **state)
{
    (void)state;
    expect_reject("{\"messageType\":\"customMessage\",\"id\":\"" ID1
                  "\",\"timestamp\":1,\"eventName\":\"a\nb\"}",
                  LOOM_EPARSE, "control character in string at byte");
    expect_reject_len("{\"a\":\"x\0y\"}", 11, LOOM_EPARSE, "control character in string at byte 7");
    expect_reject_len("{\0\"a\":1}", 8, LOOM_EPARSE, "control character at byte 1");
    expect_reject("{\x01}", LOOM_EPARSE, "control character at byte 1");
    /* \u0000 would be cut short by cJSON: refused rather than truncated. */
    expect_reject("{\"messageType\":\"customMessage\",\"id\":\"" ID1
                  "\",\"timestamp\":1,\"eventName\":\"ab\\u0000cd\"}",
                  LOOM_EPARSE, "\\u0000");
    expect_reject("{\"a\":\"\\x41\"}", LOOM_EPARSE, "invalid escape in string at byte 6");
    /* Escapes that are fine, including an escaped backslash before u0000. */
    loom_msg *m = must_decode("{\"messageType\":\"customMessage\",\"id\":\"" ID1
                              "\",\"timestamp\":1,\"eventName\":\"\\\\u0000 \\\" \\/ \\b\\f\\n"
                              "\\r\\t \\u00e9 \\ud83d\\ude00 \\u0001\"}");
    assert_string_equal(loom_msg_event_name(m), "\\u0000 \" / \b\f\n\r\t é 😀 \x01");
    loom_msg_release(m);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    char buf[512];
    int n = sprintf(buf, "{\"messageType\":\"customMessage\",\"id\":\"" ID1
                         "\",\"timestamp\":1,\"eventName\":\"e\",\"payload\":");
    for (int i = 1; i < LOOM_MAX_NESTING; i++)
        buf[n++] = '[';
    for (int i = 1; i < LOOM_MAX_NESTING; i++)
        buf[n++] = ']';
    strcpy(buf + n, "}");
    loom_msg *m = must_decode(buf); /* exactly LOOM_MAX_NESTING levels */
    loom_msg_release(m);
    /* One more level is refused. */
    n = sprintf(buf, "{\"messageType\":\"customMessage\",\"id\":\"" ID1
                     "\",\"timestamp\":1,\"eventName\":\"e\",\"payload\":");
    for (int i = 0; i < LOOM_MAX_NESTING; i++)
        buf[n++] = '[';
    for (int i = 0; i < LOOM_MAX_NESTING; i++)
        buf[n++] = ']';
    strcpy(buf + n, "}");
    expect_reject(buf, LOOM_ETOOBIG, "JSON nested deeper than 64 levels");

    /* 100k levels: no crash, no recursion, a clear error. */
    size_t deep = 100000;
    char *d = malloc(2 * deep + 32);
    size_t k = 0;
    k += (size_t)sprintf(d, "{\"payload\":");
    for (size_t i = 0; i < deep; i++)
        d[k++] = i % 2 ? '{' : '[';
    for (size_t i = 0; i < deep; i++)
        d[k++] = ']';
    expect_reject_len(d, k, LOOM_ETOOBIG, "JSON nested deeper than 64 levels");
    free(d);

    /* Brackets inside strings, even after escaped quotes, do not count. */
    char *s = malloc(deep + 256);
    k = (size_t)sprintf(s, "{\"messageType\":\"customMessage\",\"id\":\"" ID1
                           "\",\"timestamp\":1,\"eventName\":\"e\",\"payload\":\"\\\"\\\\");
    for (size_t i = 0; i < deep; i++)
        s[k++] = i % 2 ? '{' : '[';
    k += (size_t)sprintf(s + k, "\"}");
    m = NULL;
    assert_int_equal(decode_exact(s, k, &m, NULL, 0), LOOM_OK);
    assert_int_equal(strlen(cJSON_GetStringValue(loom_msg_payload(m))), deep + 2);
    loom_msg_release(m);
    free(s);
}

static void test_truncated_prefixes(void **state)
{
    (void)state;
    size_t n = strlen(FULL_CMD);
    for (size_t k = 0; k < n; k++) {
        loom_msg *m = (loom_msg *)1;
        char err[128];
        loom_err e = decode_exact(FULL_CMD, k, &m, err, sizeof err);
        if (e == LOOM_OK)
            fail_msg("prefix of %zu bytes decoded", k);
        assert_null(m);
        assert_true(err[0] != '\0');
    }
    loom_msg *m = NULL;
    assert_int_equal(decode_exact(FULL_CMD, n, &m, NULL, 0), LOOM_OK);
    loom_msg_release(m);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void test_random_mutations(void **state)
{
    (void)state;
    static const char *const interesting[] = {
        "\"",   "\\",      "{",     "}", "[",    "]",      ":",    ",",           "\xc3",
        "\xff", "\\u0000", "1e999", "-", "null", "\"id\"", "\x80", "\"payload\":"};
    const char *bases[] = {FULL_CMD, MIN_ERR, MIN_EVT};
    int decoded = 0;
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 4000; iter++) {
        const char *base = bases[iter % 3];
        size_t n = strlen(base);
        char *buf = malloc(n + 64);
        memcpy(buf, base, n);
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = rnd() % n;
            switch (rnd() % 5) {
            case 0: /* random byte */
                buf[at] = (char)rnd();
                break;
            case 1: /* flip a bit */
                buf[at] ^= (char)(1 << (rnd() % 8));
                break;
            case 2: /* delete a span */
            {
                size_t len = 1 + rnd() % 8;
                if (len > n - at)
                    len = n - at;
                memmove(buf + at, buf + at + len, n - at - len);
                n -= len;
                break;
            }
            case 3: /* insert a token */
            {
                const char *t = interesting[rnd() % (sizeof interesting / sizeof *interesting)];
                size_t tl = strlen(t);
                if (n + tl > strlen(base) + 60)
                    break;
                memmove(buf + at + tl, buf + at, n - at);
                memcpy(buf + at, t, tl);
                n += tl;
                break;
            }
            default: /* a digit */
                buf[at] = (char)('0' + rnd() % 10);
                break;
            }
        }
        loom_msg *m = NULL;
        char err[256];
        loom_err e = decode_exact(buf, n, &m, err, sizeof err);
        if (e == LOOM_OK) {
            /* Whatever decodes must encode and decode to the same message. */
            decoded++;
            char *s = encode(m, NULL);
            loom_msg *m2 = must_decode(s);
            assert_msg_equal(m, m2);
            loom_msg_release(m2);
            free(s);
            loom_msg_release(m);
        } else {
            assert_null(m);
            assert_true(err[0] != '\0');
            assert_null(strchr(err, '\n'));
        }
        free(buf);
    }
    /* The mutations are mild enough that some survive. */
    assert_true(decoded > 50);
}

static void test_decode_arguments_and_errbuf(void **state)
{
    (void)state;
    loom_msg *m = (loom_msg *)1;
    char err[64];
    assert_int_equal(loom_msg_decode(NULL, 5, &m, err, sizeof err), LOOM_EINVAL);
    assert_int_equal(loom_msg_decode("{}", 2, NULL, err, sizeof err), LOOM_EINVAL);
    assert_int_equal(loom_msg_decode(NULL, 0, &m, err, sizeof err), LOOM_EPARSE);
    assert_null(m);
    /* A tiny errbuf is truncated, never overrun; none at all is fine. */
    char tiny[8];
    memset(tiny, 'z', sizeof tiny);
    assert_int_equal(loom_msg_decode("[]", 2, &m, tiny, 6), LOOM_EPARSE);
    assert_string_equal(tiny, "not a");
    assert_int_equal(tiny[6], 'z');
    assert_int_equal(loom_msg_decode("[]", 2, &m, NULL, 0), LOOM_EPARSE);
    assert_int_equal(loom_msg_decode("[]", 2, &m, tiny, 0), LOOM_EPARSE);
    assert_int_equal(tiny[0], 'n');
    /* Trailing NUL bytes (a C string sent with its terminator) are ignored,
     * NULs anywhere else are not. */
    assert_int_equal(decode_exact(MIN_EVT, strlen(MIN_EVT) + 1, &m, err, sizeof err), LOOM_OK);
    loom_msg_release(m);
    char nuls[300];
    size_t ml = strlen(MIN_EVT);
    memcpy(nuls, MIN_EVT, ml);
    memset(nuls + ml, 0, 3);
    assert_int_equal(decode_exact(nuls, ml + 3, &m, err, sizeof err), LOOM_OK);
    loom_msg_release(m);
    nuls[ml + 1] = ' ';
    assert_int_equal(decode_exact(nuls, ml + 3, &m, err, sizeof err), LOOM_EPARSE);
    assert_non_null(strstr(err, "control character at byte"));
    assert_int_equal(decode_exact("\0\0", 2, &m, err, sizeof err), LOOM_EPARSE);
    assert_string_equal(err, "empty input");
    /* Success clears the buffer. */
    strcpy(err, "stale");
    assert_int_equal(loom_msg_decode(MIN_EVT, strlen(MIN_EVT), &m, err, sizeof err), LOOM_OK);
    assert_string_equal(err, "");
    loom_msg_release(m);
}

/* ------------------------------------------------------------------------ */
/* messages                                                                  */

static void test_refcount(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_int_equal(atomic_load(&m->refs), 1);
    assert_ptr_equal(loom_msg_retain(m), m);
    assert_ptr_equal(loom_msg_retain(m), m);
    assert_int_equal(atomic_load(&m->refs), 3);
    m->payload = t_json("{\"owned\":true}");
    assert_int_equal(loom__msg_set(m, &m->event_name, "e"), LOOM_OK);
    loom_msg_release(m);
    loom_msg_release(m);
    assert_int_equal(atomic_load(&m->refs), 1);
    assert_string_equal(loom_msg_event_name(m), "e"); /* still alive */
    loom_msg_release(m);                              /* frees; LeakSanitizer checks the rest */
    assert_null(loom_msg_retain(NULL));
    loom_msg_release(NULL);
}

static void test_new_message_defaults(void **state)
{
    (void)state;
    loom_msg *a = loom__msg_new(LOOM_MSG_COMMAND), *b = loom__msg_new(LOOM_MSG_COMMAND);
    assert_true(loom__is_id(loom_msg_id(a)));
    assert_string_not_equal(loom_msg_id(a), loom_msg_id(b));
    int64_t now = loom__now_ms();
    assert_true(loom_msg_timestamp(a) <= now && loom_msg_timestamp(a) > now - 10000);
    assert_null(loom_msg_trace_id(a));
    assert_null(loom_msg_correlation_id(a));
    assert_int_equal(loom_msg_deadline(a), 0);
    assert_null(loom_msg_sender(a)->service);
    loom_msg_release(a);
    loom_msg_release(b);
}

static void test_set_helpers(void **state)
{
    (void)state;
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    assert_non_null(m);
    char **f = &m->event_name;
    assert_int_equal(loom__msg_set(m, f, "one"), LOOM_OK);
    assert_string_equal(*f, "one");
    assert_int_equal(loom__msg_set(m, f, "two"), LOOM_OK);
    assert_string_equal(*f, "two");
    assert_int_equal(loom__msg_set(m, f, NULL), LOOM_OK);
    assert_null(*f);
    assert_int_equal(loom__msg_set(m, NULL, "x"), LOOM_EINVAL);
    assert_int_equal(loom__msg_set(NULL, f, "x"), LOOM_EINVAL);
    /* strings beyond the inline arena go to the heap and are freed too */
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < 4; i++) {
        assert_int_equal(loom__msg_set(m, &m->principal_id, big), LOOM_OK);
        assert_int_equal(loom__msg_set(m, &m->tenant_id, "short"), LOOM_OK);
    }
    assert_string_equal(m->principal_id, big);
    loom_address *a = &m->sender;
    assert_int_equal(loom__msg_set_address(m, a, "s", NULL, "t", "i"), LOOM_OK);
    assert_string_equal(a->service, "s");
    assert_null(a->version);
    assert_int_equal(loom__msg_set_address(m, a, NULL, "v", NULL, NULL), LOOM_OK);
    assert_null(a->service);
    assert_string_equal(a->version, "v");
    assert_int_equal(loom__msg_set_address(m, NULL, "s", NULL, NULL, NULL), LOOM_EINVAL);
    assert_int_equal(loom__msg_set_address(m, a, NULL, NULL, NULL, NULL), LOOM_OK);
    assert_null(a->version);
    loom_msg_release(m);
}

static loom_msg *request(void)
{
    loom_msg *r = must_decode(FULL_CMD);
    return r;
}

static void test_error_for_correlation(void **state)
{
    (void)state;
    loom_msg *req = request();
    cJSON *data = t_json("{\"field\":\"name\"}");
    loom_msg *e = loom__msg_error_for(req, 422, "invalid name", data, true);
    assert_non_null(e);
    assert_int_equal(loom_msg_type_of(e), LOOM_MSG_ERROR);
    assert_string_equal(loom_msg_correlation_id(e), ID1);
    assert_string_equal(loom_msg_trace_id(e), ID2);
    assert_string_not_equal(loom_msg_id(e), ID1);
    assert_string_equal(loom_msg_principal_id(e), "alice");
    assert_string_equal(loom_msg_tenant_id(e), "acme");
    /* Back to the caller, from the callee. */
    assert_addr_equal(loom_msg_receiver(e), loom_msg_sender(req));
    assert_addr_equal(loom_msg_sender(e), loom_msg_receiver(req));
    assert_int_equal(loom_msg_status(e), 422);
    assert_string_equal(loom_msg_error(e), "invalid name");
    assert_ptr_equal(loom_msg_error_data(e), data); /* taken over */
    assert_true(loom_msg_is_handled_error(e));
    assert_null(loom_msg_payload(e));
    cJSON *body = loom_msg_result_json(e);
    assert_true(t_json_eq(body, "{\"status\":422,\"message\":\"invalid name\","
                                "\"data\":{\"field\":\"name\"}}"));
    cJSON_Delete(body);
    free(round_trip(e));
    loom_msg_release(e);

    /* Without a request, a data or a message. */
    e = loom__msg_error_for(NULL, 500, NULL, NULL, false);
    assert_null(loom_msg_correlation_id(e));
    assert_null(loom_msg_trace_id(e));
    assert_string_equal(loom_msg_error(e), "");
    assert_false(loom_msg_is_handled_error(e));
    body = loom_msg_result_json(e);
    assert_true(t_json_eq(body, "{\"status\":500,\"message\":\"\"}"));
    cJSON_Delete(body);
    loom_msg_release(e);
    loom_msg_release(req);
}

static void test_success_for_correlation(void **state)
{
    (void)state;
    loom_msg *req = request();
    cJSON *result = t_json("{\"id\":42}");
    loom_msg *s = loom__msg_success_for(req, result);
    assert_non_null(s);
    assert_int_equal(loom_msg_type_of(s), LOOM_MSG_SUCCESS);
    assert_string_equal(loom_msg_correlation_id(s), ID1);
    assert_string_equal(loom_msg_trace_id(s), ID2);
    assert_string_equal(loom_msg_principal_id(s), "alice");
    assert_string_equal(loom_msg_tenant_id(s), "acme");
    assert_addr_equal(loom_msg_receiver(s), loom_msg_sender(req));
    assert_addr_equal(loom_msg_sender(s), loom_msg_receiver(req));
    assert_ptr_equal(loom_msg_payload(s), result);
    assert_int_equal(loom_msg_status(s), 200);
    assert_null(loom_msg_error(s));
    cJSON *r = loom_msg_result_json(s);
    assert_true(t_json_eq(r, "{\"id\":42}"));
    assert_ptr_not_equal(r, result);
    cJSON_Delete(r);
    free(round_trip(s));
    loom_msg_release(s);
    loom_msg_release(req);
}

static void test_status_204_for_empty_results(void **state)
{
    (void)state;
    loom_msg *s = loom__msg_success_for(NULL, NULL);
    assert_int_equal(loom_msg_status(s), 204);
    assert_null(loom_msg_result_json(s));
    loom_msg_release(s);
    s = loom__msg_success_for(NULL, cJSON_CreateNull());
    assert_int_equal(loom_msg_status(s), 204);
    assert_null(loom_msg_result_json(s));
    loom_msg_release(s);
    s = loom__msg_success_for(NULL, cJSON_CreateFalse());
    assert_int_equal(loom_msg_status(s), 200);
    cJSON *r = loom_msg_result_json(s);
    assert_true(cJSON_IsFalse(r));
    cJSON_Delete(r);
    loom_msg_release(s);
    /* Also after the wire: absent and null payloads. */
    s = must_decode("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                    "\",\"timestamp\":1}");
    assert_int_equal(loom_msg_status(s), 204);
    loom_msg_release(s);
    s = must_decode("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                    "\",\"timestamp\":1,\"payload\":null}");
    assert_int_equal(loom_msg_status(s), 204);
    loom_msg_release(s);
    s = must_decode("{\"messageType\":\"commandSuccessResponse\",\"id\":\"" ID1
                    "\",\"timestamp\":1,\"payload\":0}");
    assert_int_equal(loom_msg_status(s), 200);
    loom_msg_release(s);
}

static void test_accessors(void **state)
{
    (void)state;
    /* NULL is never a crash. */
    assert_int_equal(loom_msg_type_of(NULL), 0);
    assert_null(loom_msg_payload(NULL));
    assert_null(loom_msg_parameter(NULL));
    assert_int_equal(loom_msg_status(NULL), 0);
    assert_null(loom_msg_error(NULL));
    assert_null(loom_msg_error_data(NULL));
    assert_false(loom_msg_is_handled_error(NULL));
    assert_null(loom_msg_id(NULL));
    assert_null(loom_msg_trace_id(NULL));
    assert_null(loom_msg_correlation_id(NULL));
    assert_null(loom_msg_principal_id(NULL));
    assert_null(loom_msg_tenant_id(NULL));
    assert_null(loom_msg_event_name(NULL));
    assert_null(loom_msg_reply_to(NULL));
    assert_int_equal(loom_msg_timestamp(NULL), 0);
    assert_int_equal(loom_msg_deadline(NULL), 0);
    assert_null(loom_msg_sender(NULL));
    assert_null(loom_msg_receiver(NULL));
    assert_null(loom_msg_result_json(NULL));

    assert_string_equal(loom_msg_type_name(LOOM_MSG_COMMAND), "command");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_SUCCESS), "commandSuccessResponse");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_ERROR), "commandErrorResponse");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_CUSTOM), "customMessage");
    assert_string_equal(loom_msg_type_name(LOOM_MSG_INFO), "info");
    assert_string_equal(loom_msg_type_name((loom_msg_type)0), "unknown");

    /* Fields belong to their message types. */
    loom_msg *m = loom__msg_new(LOOM_MSG_CUSTOM);
    m->payload = t_json("[1]");
    m->parameter = t_json("{}");
    m->error_message = strdup("x");
    m->status = 500;
    m->handled = true;
    assert_non_null(loom_msg_payload(m));
    assert_null(loom_msg_parameter(m));
    assert_null(loom_msg_error(m));
    assert_false(loom_msg_is_handled_error(m));
    assert_int_equal(loom_msg_status(m), 0);
    assert_null(loom_msg_result_json(m));
    m->type = LOOM_MSG_ERROR;
    assert_null(loom_msg_payload(m));
    assert_string_equal(loom_msg_error(m), "x");
    assert_int_equal(loom_msg_status(m), 500);
    loom_msg_release(m);
}

static void test_strerror_and_free(void **state)
{
    (void)state;
    for (int e = LOOM_OK; e <= LOOM_ETOOBIG; e++) {
        const char *s = loom_strerror((loom_err)e);
        assert_non_null(s);
        assert_string_not_equal(s, "unknown error");
        for (int f = LOOM_OK; f < e; f++)
            assert_string_not_equal(s, loom_strerror((loom_err)f));
    }
    assert_string_equal(loom_strerror(LOOM_EINVAL), "invalid argument");
    assert_string_equal(loom_strerror((loom_err)999), "unknown error");
    assert_string_equal(loom_strerror((loom_err)-1), "unknown error");
    loom_free(NULL);
    loom_free(malloc(10));
}

/* ------------------------------------------------------------------------ */
/* JSON numbers: the shortest text that reads back to the same double        */

static void expect_number(double d, const char *want)
{
    char buf[LOOM__JSON_NUMBER_MAX];
    size_t n = loom__json_number(buf, d);
    if (strcmp(buf, want) != 0 || n != strlen(want))
        fail_msg("%.17g: got \"%s\", want \"%s\"", d, buf, want);
}

static void test_json_numbers(void **state)
{
    (void)state;
    expect_number(0.1 + 0.2, "0.30000000000000004");
    expect_number(9007199254740992.0, "9007199254740992"); /* 2^53 */
    expect_number(-9007199254740992.0, "-9007199254740992");
    expect_number(9007199254740991.0, "9007199254740991");
    expect_number(1e300, "1e+300");
    expect_number(-0.0, "-0");
    expect_number(0.0, "0");
    expect_number(5e-324, "5e-324"); /* the smallest subnormal */
    expect_number(DBL_MIN, "2.2250738585072014e-308");
    expect_number(DBL_MAX, "1.7976931348623157e+308");
    expect_number(0.1, "0.1");
    expect_number(1.5, "1.5");
    expect_number(-42, "-42");
    expect_number(1700000000123.0, "1700000000123");
    expect_number(1e21, "1e+21");
    expect_number(18014398509481984.0, "18014398509481984"); /* 2^54: %.17g is exact */
    expect_number(39.9, "39.9");
    /* Every double reads back, and no shorter precision would. */
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        memcpy(&d, &x, sizeof d);
        if (!isfinite(d))
            continue;
        char buf[LOOM__JSON_NUMBER_MAX];
        loom__json_number(buf, d);
        double back = strtod(buf, NULL);
        if (memcmp(&back, &d, sizeof d) != 0)
            fail_msg("%a printed as %s reads back as %a", d, buf, back);
        if (strchr(buf, 'e') || strchr(buf, '.')) {
            char shorter[400];
            int sig = 0; /* significant digits: leading zeros do not count */
            for (const char *c = buf; *c && *c != 'e'; c++)
                if (*c >= '1' || (*c == '0' && sig))
                    sig += *c >= '0' && *c <= '9';
            if (sig > 1) {
                snprintf(shorter, sizeof shorter, "%.*g", sig - 1, d);
                if (strtod(shorter, NULL) == d)
                    fail_msg("%s is not the shortest for %a: %s is", buf, d, shorter);
            }
        }
    }
}

/* cJSON allocations that fail after the first `oom_left` succeed. */
static int oom_left = -1;

static void *oom_malloc(size_t n)
{
    if (oom_left == 0)
        return NULL;
    if (oom_left > 0)
        oom_left--;
    return malloc(n);
}

/* An error's result JSON when each of cJSON's allocations fails in turn:
 * NULL or complete, never a leak (ASan counts one: the error data was not
 * the result's when adding it failed). */
static void test_error_result_out_of_memory(void **state)
{
    (void)state;
    cJSON *data = cJSON_CreateObject();
    cJSON_AddStringToObject(data, "reason", "why");
    loom_msg *m = loom__msg_error_for(NULL, 409, "taken", data, true);
    assert_non_null(m);
    cJSON_Hooks hooks = {oom_malloc, free};
    bool complete = false;
    for (int n = 0; n < 64 && !complete; n++) {
        oom_left = n;
        cJSON_InitHooks(&hooks);
        cJSON *r = loom_msg_result_json(m);
        oom_left = -1;
        complete = r != NULL;
        if (r)
            assert_true(t_json_eq(r, "{\"status\":409,\"message\":\"taken\","
                                     "\"data\":{\"reason\":\"why\"}}"));
        cJSON_Delete(r);
    }
    cJSON_InitHooks(NULL);
    assert_true(complete);
    loom_msg_release(m);
}

/* A host program's LC_NUMERIC (setlocale(LC_ALL, "") in a German locale
 * writes "0,3") changes neither what loom prints nor its read-back check.
 * The locale comes from Debian's locales-all (make deps). */
static void test_json_numbers_locale(void **state)
{
    (void)state;
    locale_t de = newlocale(LC_NUMERIC_MASK, "de_DE.UTF-8", (locale_t)0);
    if (!de)
        fail_msg("locale de_DE.UTF-8 is not installed: run `make deps` (locales-all)");
    locale_t prev = uselocale(de);
    char probe[16];
    snprintf(probe, sizeof probe, "%.1f", 0.5);
    assert_string_equal(probe, "0,5"); /* the locale is in effect */
    expect_number(0.1 + 0.2, "0.30000000000000004");
    expect_number(0.1, "0.1");
    expect_number(-39.9, "-39.9");
    expect_number(1e300, "1e+300");
    expect_number(5e-324, "5e-324");
    expect_number(DBL_MIN, "2.2250738585072014e-308");
    cJSON *v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "x", 2.5);
    char *text = loom__json_print(v, NULL);
    assert_string_equal(text, "{\"x\":2.5}");
    cJSON *parsed = NULL;
    assert_int_equal(loom__json_parse(text, strlen(text), 64, &parsed, NULL, 0, NULL), LOOM_OK);
    assert_true(cJSON_GetObjectItem(parsed, "x")->valuedouble == 2.5);
    cJSON_Delete(parsed);
    free(text);
    cJSON_Delete(v);
    assert_true(uselocale((locale_t)0) == de); /* the caller's locale is back */
    uselocale(prev);
    freelocale(de);
}

/* The writer, the encoder and the parser agree on numbers: they round-trip
 * through an envelope, and non-finite ones are refused, never sent as null. */
static void test_json_numbers_roundtrip(void **state)
{
    (void)state;
    cJSON *v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "sum", 0.1 + 0.2);
    cJSON_AddNumberToObject(v, "big", 9007199254740992.0);
    cJSON_AddNumberToObject(v, "tiny", 5e-324);
    cJSON_AddNumberToObject(v, "negzero", -0.0);
    char *text = loom__json_print(v, NULL);
    assert_string_equal(text, "{\"sum\":0.30000000000000004,\"big\":9007199254740992,"
                              "\"tiny\":5e-324,\"negzero\":-0}");
    free(text);

    loom_msg *m = loom__msg_new(LOOM_MSG_SUCCESS);
    m->payload = v;
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(loom_msg_encode(m, &out, &len), LOOM_OK);
    assert_non_null(strstr(out, "\"sum\":0.30000000000000004"));
    assert_non_null(strstr(out, "\"big\":9007199254740992"));
    loom_msg *back = NULL;
    assert_int_equal(loom_msg_decode(out, len, &back, NULL, 0), LOOM_OK);
    const cJSON *p = loom_msg_payload(back);
    assert_true(cJSON_GetObjectItem(p, "sum")->valuedouble == 0.1 + 0.2);
    assert_true(cJSON_GetObjectItem(p, "big")->valuedouble == 9007199254740992.0);
    assert_true(cJSON_GetObjectItem(p, "tiny")->valuedouble == 5e-324);
    assert_true(signbit(cJSON_GetObjectItem(p, "negzero")->valuedouble));
    loom_msg_release(back);
    free(out);

    cJSON_AddNumberToObject(v, "inf", INFINITY);
    assert_int_equal(loom_msg_encode(m, &out, &len), LOOM_EINVAL);
    loom_err err = LOOM_OK;
    assert_null(loom__json_print(v, &err));
    assert_int_equal(err, LOOM_EINVAL);
    loom_msg_release(m);

    cJSON *parsed = NULL;
    char why[128];
    assert_int_equal(loom__json_parse("[1e999]", 7, 64, &parsed, why, sizeof why, NULL),
                     LOOM_EPARSE);
    assert_non_null(strstr(why, "not finite"));
    assert_int_equal(loom__json_parse("{\"a\":-1e400}", 12, 64, &parsed, why, sizeof why, NULL),
                     LOOM_EPARSE);
    assert_null(parsed);
    assert_int_equal(loom__json_parse(" [1, 2.5] \n", 11, 64, &parsed, why, sizeof why, NULL),
                     LOOM_OK);
    cJSON_Delete(parsed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_ids),
        cmocka_unit_test(test_roundtrip_command),
        cmocka_unit_test(test_roundtrip_command_empty_payload),
        cmocka_unit_test(test_roundtrip_success),
        cmocka_unit_test(test_roundtrip_error),
        cmocka_unit_test(test_roundtrip_custom),
        cmocka_unit_test(test_roundtrip_info),
        cmocka_unit_test(test_encode_minimal_omits_absent),
        cmocka_unit_test(test_encode_escapes_strings),
        cmocka_unit_test(test_encode_large_payload),
        cmocka_unit_test(test_encode_rejects_what_decode_would),
        cmocka_unit_test(test_encode_depth_limit),
        cmocka_unit_test(test_decode_full_fields),
        cmocka_unit_test(test_decode_minimal_and_lenient),
        cmocka_unit_test(test_decode_command_payload_shapes),
        cmocka_unit_test(test_reject_not_object),
        cmocka_unit_test(test_reject_malformed_json),
        cmocka_unit_test(test_reject_version),
        cmocka_unit_test(test_reject_message_type),
        cmocka_unit_test(test_reject_id),
        cmocka_unit_test(test_json_numbers),
        cmocka_unit_test(test_json_numbers_roundtrip),
        cmocka_unit_test(test_json_numbers_locale),
        cmocka_unit_test(test_error_result_out_of_memory),
        cmocka_unit_test(test_reject_timestamp),
        cmocka_unit_test(test_reject_deadline),
        cmocka_unit_test(test_reject_trace_and_correlation_ids),
        cmocka_unit_test(test_reject_string_fields),
        cmocka_unit_test(test_reject_addresses),
        cmocka_unit_test(test_reject_command_without_receiver),
        cmocka_unit_test(test_reject_command_payload),
        cmocka_unit_test(test_reject_error_payload),
        cmocka_unit_test(test_reject_is_handled_error),
        cmocka_unit_test(test_reject_event_without_name),
        cmocka_unit_test(test_reject_duplicate_keys),
        cmocka_unit_test(test_reject_invalid_utf8),
        cmocka_unit_test(test_reject_control_and_escapes),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_truncated_prefixes),
        cmocka_unit_test(test_random_mutations),
        cmocka_unit_test(test_decode_arguments_and_errbuf),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_new_message_defaults),
        cmocka_unit_test(test_set_helpers),
        cmocka_unit_test(test_error_for_correlation),
        cmocka_unit_test(test_success_for_correlation),
        cmocka_unit_test(test_status_204_for_empty_results),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_strerror_and_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
