/* Tests for the JSON Schema subset validator (lib/codec/schema.c). */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/support.h"

#include "codec/schema.h"
#include "core/util.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static loom__schema *compile_ok(const char *text)
{
    loom__schema *s = NULL;
    char err[256] = "unset";
    loom_err rc = loom__schema_compile(&s, text, err, sizeof err);
    if (rc != LOOM_OK || !s)
        fail_msg("schema %s does not compile: %s", text, err);
    assert_string_equal(err, "");
    return s;
}

static void expect_compile_error(const char *text, const char *expected)
{
    loom__schema *s = (loom__schema *)(uintptr_t)1;
    char err[512] = "";
    loom_err rc = loom__schema_compile(&s, text, err, sizeof err);
    if (rc != LOOM_EINVAL)
        fail_msg("schema %s: expected LOOM_EINVAL, got %d", text, (int)rc);
    assert_null(s);
    if (strcmp(err, expected) != 0)
        fail_msg("schema %s:\n  expected error: %s\n  actual error:   %s", text, expected, err);
}

/* loom__schema_validate without the details' "schemaPath" members, which
 * test_schema_paths checks: the older tests compare path and message. */
static bool validate_plain(const loom__schema *s, const cJSON *v, cJSON **details)
{
    bool ok = loom__schema_validate(s, v, details);
    const cJSON *d;
    if (details && *details)
        cJSON_ArrayForEach(d, *details) cJSON_DeleteItemFromObject((cJSON *)d, "schemaPath");
    return ok;
}

/* Validates value (JSON text, or NULL for "absent") and checks the result
 * with and without details. */
static bool check(const char *schema, const char *value, cJSON **details)
{
    loom__schema *s = compile_ok(schema);
    cJSON *v = value ? t_json(value) : NULL;
    char *before = v ? cJSON_PrintUnformatted(v) : NULL;
    bool ok = validate_plain(s, v, details);
    /* Without details: same verdict. */
    assert_int_equal(validate_plain(s, v, NULL), ok);
    /* Never modifies the value. */
    if (v) {
        char *after = cJSON_PrintUnformatted(v);
        assert_string_equal(before, after);
        cJSON_free(after);
    }
    cJSON_free(before);
    cJSON_Delete(v);
    loom__schema_free(s);
    return ok;
}

static void expect_valid(const char *schema, const char *value)
{
    cJSON *details = (cJSON *)(uintptr_t)1;
    if (!check(schema, value, &details)) {
        char *d = details ? cJSON_PrintUnformatted(details) : NULL;
        fail_msg("schema %s rejects %s: %s", schema, value ? value : "(absent)", d ? d : "");
    }
    assert_null(details);
}

/* expected: the exact details array as JSON text. */
static void expect_invalid(const char *schema, const char *value, const char *expected)
{
    cJSON *details = NULL;
    if (check(schema, value, &details))
        fail_msg("schema %s accepts %s", schema, value ? value : "(absent)");
    assert_non_null(details);
    if (!t_json_eq(details, expected)) {
        char *d = cJSON_PrintUnformatted(details);
        fail_msg("schema %s, value %s:\n  expected details: %s\n  actual details:   %s", schema,
                 value ? value : "(absent)", expected, d);
    }
    cJSON_Delete(details);
}

/* One detail at path with message. */
static void expect_error(const char *schema, const char *value, const char *path,
                         const char *message)
{
    char expected[1024];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddStringToObject(o, "message", message);
    char *text = cJSON_PrintUnformatted(o);
    snprintf(expected, sizeof expected, "[%s]", text);
    cJSON_free(text);
    cJSON_Delete(o);
    expect_invalid(schema, value, expected);
}

/* n nested arrays: [[[...]]]. */
static cJSON *nested_arrays(int n)
{
    cJSON *root = cJSON_CreateArray();
    cJSON *cur = root;
    for (int i = 1; i < n; i++) {
        cJSON *a = cJSON_CreateArray();
        cJSON_AddItemToArray(cur, a);
        cur = a;
    }
    return root;
}

/* "/0/0/..." with n tokens. */
static char *zero_path(int n)
{
    char *p = calloc((size_t)n * 2 + 1, 1);
    for (int i = 0; i < n; i++)
        memcpy(p + i * 2, "/0", 2);
    return p;
}

/* ------------------------------------------------------------------------ */
/* Whole schemas                                                             */

static void test_boolean_and_empty_schemas(void **state)
{
    (void)state;
    const char *values[] = {"null", "true", "0", "1.5", "\"x\"", "[]", "{}", "[1,{\"a\":[]}]"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(values); i++) {
        expect_valid("true", values[i]);
        expect_valid("{}", values[i]);
        expect_valid("{\"title\":\"t\",\"description\":\"d\"}", values[i]);
        expect_error("false", values[i], "", "value is not allowed");
    }
    /* Absent values: accepted by schemas that allow everything. */
    expect_valid("true", NULL);
    expect_valid("{}", NULL);
    expect_error("false", NULL, "", "value is not allowed");
}

static void test_annotations_accepted(void **state)
{
    (void)state;
    const char *schema = "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\","
                         "\"$id\":\"urn:x\",\"title\":\"T\",\"description\":\"D\","
                         "\"default\":{\"a\":1},\"examples\":[\"x@y\"],"
                         "\"type\":\"string\",\"format\":\"email\"}";
    expect_valid(schema, "\"x@y\"");
    /* format is not asserted. */
    expect_valid(schema, "\"not an email\"");
    expect_error(schema, "1", "", "expected string, got number");
}

static void test_null_schema_and_free(void **state)
{
    (void)state;
    cJSON *v = t_json("{\"a\":1}");
    cJSON *details = (cJSON *)(uintptr_t)1;
    assert_true(validate_plain(NULL, v, &details));
    assert_null(details);
    assert_true(validate_plain(NULL, NULL, NULL));
    cJSON_Delete(v);
    loom__schema_free(NULL);
}

/* ------------------------------------------------------------------------ */
/* type                                                                      */

static void test_type_single(void **state)
{
    (void)state;
    expect_valid("{\"type\":\"object\"}", "{}");
    expect_error("{\"type\":\"object\"}", "[]", "", "expected object, got array");
    expect_valid("{\"type\":\"array\"}", "[1]");
    expect_error("{\"type\":\"array\"}", "{}", "", "expected array, got object");
    expect_valid("{\"type\":\"string\"}", "\"\"");
    expect_error("{\"type\":\"string\"}", "5", "", "expected string, got number");
    expect_valid("{\"type\":\"number\"}", "5");
    expect_valid("{\"type\":\"number\"}", "-5.25e3");
    expect_error("{\"type\":\"number\"}", "\"5\"", "", "expected number, got string");
    expect_valid("{\"type\":\"boolean\"}", "true");
    expect_valid("{\"type\":\"boolean\"}", "false");
    expect_error("{\"type\":\"boolean\"}", "0", "", "expected boolean, got number");
    expect_valid("{\"type\":\"null\"}", "null");
    expect_error("{\"type\":\"null\"}", "false", "", "expected null, got boolean");
    /* integer = a number with no fractional part. */
    expect_valid("{\"type\":\"integer\"}", "42");
    expect_valid("{\"type\":\"integer\"}", "-7");
    expect_valid("{\"type\":\"integer\"}", "3.0");
    expect_valid("{\"type\":\"integer\"}", "1e20");
    expect_error("{\"type\":\"integer\"}", "3.5", "", "expected integer, got number");
    expect_error("{\"type\":\"integer\"}", "\"3\"", "", "expected integer, got string");
}

static void test_type_array(void **state)
{
    (void)state;
    const char *s = "{\"type\":[\"string\",\"null\"]}";
    expect_valid(s, "\"x\"");
    expect_valid(s, "null");
    expect_valid(s, NULL);
    expect_error(s, "1", "", "expected string or null, got number");
    expect_error("{\"type\":[\"string\",\"number\",\"null\"]}", "{}", "",
                 "expected string, number or null, got object");
    expect_valid("{\"type\":[\"integer\",\"boolean\"]}", "true");
    expect_error("{\"type\":[\"integer\",\"boolean\"]}", "0.5", "",
                 "expected integer or boolean, got number");
}

static void test_absent_value(void **state)
{
    (void)state;
    /* Absent is validated like JSON null. */
    expect_error("{\"type\":\"object\"}", NULL, "", "expected object, got null");
    expect_valid("{\"type\":\"null\"}", NULL);
    expect_valid("{\"required\":[\"a\"],\"properties\":{\"a\":{\"type\":\"string\"}}}", NULL);
    expect_valid("{\"enum\":[1,null]}", NULL);
    expect_error("{\"enum\":[1,2]}", NULL, "", "must be one of [1,2]");
    expect_error("{\"const\":0}", NULL, "", "must be 0");
}

static void test_unusual_values(void **state)
{
    (void)state;
    loom__schema *s = compile_ok("{\"minimum\":0,\"maximum\":10}");
    cJSON *nan = cJSON_CreateNumber(NAN);
    cJSON *details = NULL;
    assert_false(validate_plain(s, nan, &details));
    assert_true(t_json_eq(details, "[{\"path\":\"\",\"message\":\"must be >= 0\"},"
                                   "{\"path\":\"\",\"message\":\"must be <= 10\"}]"));
    cJSON_Delete(details);
    cJSON_Delete(nan);
    loom__schema_free(s);

    /* Raw values match no type. */
    s = compile_ok("{\"type\":\"string\"}");
    cJSON *raw = cJSON_CreateRaw("1");
    assert_false(validate_plain(s, raw, &details));
    assert_true(t_json_eq(
        details, "[{\"path\":\"\",\"message\":\"expected string, got an unknown value\"}]"));
    cJSON_Delete(details);
    cJSON_Delete(raw);
    loom__schema_free(s);

    /* An infinite number is not an integer. */
    s = compile_ok("{\"type\":\"integer\"}");
    cJSON *inf = cJSON_CreateNumber(INFINITY);
    assert_false(validate_plain(s, inf, NULL));
    cJSON_Delete(inf);
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Objects                                                                   */

static void test_properties(void **state)
{
    (void)state;
    const char *s = "{\"properties\":{\"a\":{\"type\":\"integer\"},"
                    "\"b\":{\"properties\":{\"c\":{\"type\":\"string\"}}}}}";
    expect_valid(s, "{}");
    expect_valid(s, "{\"a\":1,\"b\":{\"c\":\"x\"},\"other\":[1]}");
    expect_valid(s, "\"not an object\""); /* properties only constrain objects */
    expect_error(s, "{\"a\":\"1\"}", "/a", "expected integer, got string");
    expect_error(s, "{\"b\":{\"c\":false}}", "/b/c", "expected string, got boolean");
    expect_invalid(s, "{\"a\":1.5,\"b\":{\"c\":1}}",
                   "[{\"path\":\"/a\",\"message\":\"expected integer, got number\"},"
                   "{\"path\":\"/b/c\",\"message\":\"expected string, got number\"}]");
    /* Duplicate keys in a value are each validated. */
    expect_error(s, "{\"a\":1,\"a\":\"x\"}", "/a", "expected integer, got string");
    /* A property whose schema is false. */
    expect_valid("{\"properties\":{\"x\":false}}", "{\"y\":1}");
    expect_error("{\"properties\":{\"x\":false}}", "{\"x\":1}", "", "property 'x' is not allowed");
}

static void test_required(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"required\":[\"name\",\"email\"]}";
    expect_valid(s, "{\"name\":1,\"email\":null}");
    expect_error(s, "{\"name\":\"a\"}", "", "required property 'email' is missing");
    expect_invalid(s, "{}",
                   "[{\"path\":\"\",\"message\":\"required property 'name' is missing\"},"
                   "{\"path\":\"\",\"message\":\"required property 'email' is missing\"}]");
    /* Names are case-sensitive. */
    expect_error(s, "{\"Name\":1,\"email\":2}", "", "required property 'name' is missing");
    /* required only applies to objects. */
    expect_valid("{\"required\":[\"a\"]}", "[]");
    expect_valid("{\"required\":[]}", "{}");
    /* Nested: the path is the object's. */
    expect_error("{\"properties\":{\"user\":{\"required\":[\"id\"]}}}", "{\"user\":{}}", "/user",
                 "required property 'id' is missing");
}

/* required with properties: answered from the same pass over the members
 * as the properties (up to 8 properties scanned, more searched, members past
 * the 64th looked up again); a required name that is no property, and the
 * order of the details (required first, then the members), as before. */
static void test_required_with_properties(void **state)
{
    (void)state;
    const char *few = "{\"properties\":{\"b\":{\"type\":\"string\"},\"a\":{\"type\":\"integer\"}},"
                      "\"required\":[\"a\",\"x\",\"b\"]}";
    expect_valid(few, "{\"x\":null,\"b\":\"s\",\"a\":1}");
    expect_invalid(few, "{\"b\":2,\"ab\":1}",
                   "[{\"path\":\"\",\"message\":\"required property 'a' is missing\"},"
                   "{\"path\":\"\",\"message\":\"required property 'x' is missing\"},"
                   "{\"path\":\"/b\",\"message\":\"expected string, got number\"}]");
    char many[1024] = "{\"properties\":{";
    for (int i = 0; i < 12; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"p%d\":{\"type\":\"string\"}",
                 i ? "," : "", i);
    strcat(many,
           "},\"required\":[\"p11\",\"p0\",\"q\"],\"additionalProperties\":{\"type\":\"null\"}}");
    expect_valid(many, "{\"q\":null,\"p0\":\"\",\"p11\":\"\"}");
    expect_error(many, "{\"q\":null,\"p0\":\"\"}", "", "required property 'p11' is missing");
    expect_error(many, "{\"p11\":\"\",\"p0\":\"\",\"q\":1}", "/q", "expected null, got number");
    /* 70 members: p11 and q come after the 64th. */
    char value[2048] = "{";
    for (int i = 0; i < 68; i++)
        snprintf(value + strlen(value), sizeof value - strlen(value), "\"m%d\":null,", i);
    strcat(value, "\"p0\":\"\",\"p11\":\"\"}");
    expect_error(many, value, "", "required property 'q' is missing");
    value[strlen(value) - 3] = '\0';
    strcat(value, "1,\"q\":null}");
    expect_error(many, value, "/p11", "expected string, got number");
    /* Code points are counted when the byte length cannot decide. */
    expect_error("{\"minLength\":2}", "\"\xf0\x9f\x98\x80\"", "",
                 "must have at least 2 characters");
    expect_valid("{\"minLength\":2,\"maxLength\":2}", "\"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\"");
}

static void test_additional_properties(void **state)
{
    (void)state;
    const char *closed = "{\"properties\":{\"a\":{}},\"additionalProperties\":false}";
    expect_valid(closed, "{\"a\":1}");
    expect_valid(closed, "{}");
    expect_error(closed, "{\"a\":1,\"b\":2}", "", "property 'b' is not allowed");
    expect_invalid(closed, "{\"x\":1,\"a\":1,\"y\":2}",
                   "[{\"path\":\"\",\"message\":\"property 'x' is not allowed\"},"
                   "{\"path\":\"\",\"message\":\"property 'y' is not allowed\"}]");

    const char *typed = "{\"properties\":{\"a\":{\"type\":\"string\"}},"
                        "\"additionalProperties\":{\"type\":\"integer\"}}";
    expect_valid(typed, "{\"a\":\"s\",\"b\":1,\"c\":2}");
    expect_error(typed, "{\"a\":\"s\",\"b\":\"no\"}", "/b", "expected integer, got string");
    expect_error(typed, "{\"a\":1}", "/a", "expected string, got number");

    expect_valid("{\"additionalProperties\":true}", "{\"anything\":[1]}");
    expect_error("{\"additionalProperties\":false}", "{\"z\":null}", "",
                 "property 'z' is not allowed");
    expect_valid("{\"additionalProperties\":false}", "[1]");
}

static void test_pointer_escaping(void **state)
{
    (void)state;
    const char *s = "{\"properties\":{\"a/b\":{\"type\":\"string\"},\"m~n\":{\"properties\":"
                    "{\"~/\":{\"type\":\"string\"}}},\"\":{\"type\":\"string\"}}}";
    expect_error(s, "{\"a/b\":1}", "/a~1b", "expected string, got number");
    expect_error(s, "{\"m~n\":{\"~/\":1}}", "/m~0n/~0~1", "expected string, got number");
    /* The empty key is a token of its own. */
    expect_error(s, "{\"\":1}", "/", "expected string, got number");
    expect_error("{\"additionalProperties\":{\"items\":{\"type\":\"null\"}}}",
                 "{\"x/y\":[null,null,0]}", "/x~1y/2", "expected null, got number");
}

static void test_shop_user(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\","
                    "\"minLength\":1},\"email\":{\"type\":\"string\",\"pattern\":"
                    "\"^[^@]+@[^@]+$\"}},\"required\":[\"name\",\"email\"],"
                    "\"additionalProperties\":false}";
    expect_valid(s, "{\"name\":\"Ann\",\"email\":\"ann@example.com\"}");
    expect_valid(s, "{\"email\":\"ann@example.com\",\"name\":\"A\"}");
    expect_invalid(s, "{}",
                   "[{\"path\":\"\",\"message\":\"required property 'name' is missing\"},"
                   "{\"path\":\"\",\"message\":\"required property 'email' is missing\"}]");
    expect_invalid(s, "{\"name\":\"\",\"email\":\"nope\",\"admin\":true}",
                   "[{\"path\":\"/name\",\"message\":\"must have at least 1 character\"},"
                   "{\"path\":\"/email\",\"message\":\"must match pattern '^[^@]+@[^@]+$'\"},"
                   "{\"path\":\"\",\"message\":\"property 'admin' is not allowed\"}]");
    expect_invalid(s, "{\"name\":5,\"email\":\"a@b@c\"}",
                   "[{\"path\":\"/name\",\"message\":\"expected string, got number\"},"
                   "{\"path\":\"/email\",\"message\":\"must match pattern '^[^@]+@[^@]+$'\"}]");
    expect_error(s, "[]", "", "expected object, got array");
    expect_error(s, NULL, "", "expected object, got null");
}

/* ------------------------------------------------------------------------ */
/* Arrays                                                                    */

static void test_items(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}";
    expect_valid(s, "[]");
    expect_valid(s, "[1,2,3]");
    expect_error(s, "[1,\"2\",3]", "/1", "expected integer, got string");
    expect_invalid(s, "[\"a\",2,null]",
                   "[{\"path\":\"/0\",\"message\":\"expected integer, got string\"},"
                   "{\"path\":\"/2\",\"message\":\"expected integer, got null\"}]");
    /* items only applies to arrays. */
    expect_valid("{\"items\":{\"type\":\"integer\"}}", "{\"0\":\"x\"}");
    /* Nested arrays of objects. */
    const char *nested = "{\"items\":{\"items\":{\"properties\":{\"age\":{\"minimum\":0}}}}}";
    expect_error(nested, "[[],[{\"age\":1},{\"age\":-1}]]", "/1/1/age", "must be >= 0");
    /* items: false allows only the empty array. */
    expect_valid("{\"items\":false}", "[]");
    expect_error("{\"items\":false}", "[7]", "/0", "value is not allowed");
    expect_valid("{\"items\":true}", "[1,\"a\",null]");
}

static void test_min_max_items(void **state)
{
    (void)state;
    const char *s = "{\"minItems\":1,\"maxItems\":3}";
    expect_valid(s, "[1]");
    expect_valid(s, "[1,2,3]");
    expect_error(s, "[]", "", "must have at least 1 item");
    expect_error(s, "[1,2,3,4]", "", "must have at most 3 items");
    expect_error("{\"minItems\":2}", "[1]", "", "must have at least 2 items");
    expect_error("{\"maxItems\":1}", "[1,2]", "", "must have at most 1 item");
    expect_error("{\"maxItems\":0}", "[null]", "", "must have at most 0 items");
    expect_valid("{\"minItems\":5}", "\"short\""); /* only arrays */
}

/* ------------------------------------------------------------------------ */
/* enum and const                                                            */

static void test_enum(void **state)
{
    (void)state;
    const char *s = "{\"enum\":[\"a\",\"b\"]}";
    expect_valid(s, "\"a\"");
    expect_valid(s, "\"b\"");
    expect_error(s, "\"c\"", "", "must be one of [\"a\",\"b\"]");
    expect_error(s, "\"A\"", "", "must be one of [\"a\",\"b\"]");
    expect_error(s, "[\"a\"]", "", "must be one of [\"a\",\"b\"]");

    /* Deep comparison: numbers by value, objects in any member order,
     * arrays in order. */
    const char *deep = "{\"enum\":[1,null,true,{\"x\":[1,{\"y\":\"z\"}],\"w\":2},[1,2]]}";
    expect_valid(deep, "1.0");
    expect_valid(deep, "null");
    expect_valid(deep, "true");
    expect_valid(deep, "{\"w\":2,\"x\":[1,{\"y\":\"z\"}]}");
    expect_valid(deep, "[1,2]");
    expect_invalid(deep, "false",
                   "[{\"path\":\"\",\"message\":"
                   "\"must be one of [1,null,true,{\\\"x\\\":[1,{\\\"y\\\":"
                   "\\\"z\\\"}],\\\"w\\\":2},[1,2]]\"}]");
    assert_false(check(deep, "[2,1]", NULL));
    assert_false(check(deep, "[1,2,3]", NULL));
    assert_false(check(deep, "{\"w\":2,\"x\":[1,{\"y\":\"Z\"}]}", NULL));
    assert_false(check(deep, "{\"w\":2,\"x\":[1,{\"y\":\"z\"}],\"v\":3}", NULL));
    assert_false(check(deep, "{\"w\":2}", NULL));
    assert_false(check(deep, "{\"w\":2,\"w\":2}", NULL));
    assert_false(check(deep, "1.5", NULL));
    assert_false(check(deep, "\"1\"", NULL));

    /* A long list is summarized. */
    char big[4096];
    size_t len = (size_t)snprintf(big, sizeof big, "{\"enum\":[");
    for (int i = 0; i < 100; i++)
        len += (size_t)snprintf(big + len, sizeof big - len, "%s\"value-%d\"", i ? "," : "", i);
    snprintf(big + len, sizeof big - len, "]}");
    expect_valid(big, "\"value-99\"");
    expect_error(big, "\"value-100\"", "", "must be one of the 100 allowed values");
}

static void test_const(void **state)
{
    (void)state;
    expect_valid("{\"const\":\"admin\"}", "\"admin\"");
    expect_error("{\"const\":\"admin\"}", "\"user\"", "", "must be \"admin\"");
    expect_valid("{\"const\":{\"a\":[1,2],\"b\":null}}", "{\"b\":null,\"a\":[1,2.0]}");
    expect_error("{\"const\":{\"a\":[1,2]}}", "{\"a\":[2,1]}", "", "must be {\"a\":[1,2]}");
    expect_valid("{\"const\":null}", "null");
    expect_error("{\"const\":false}", "0", "", "must be false");
    expect_error("{\"properties\":{\"v\":{\"const\":2}}}", "{\"v\":3}", "/v", "must be 2");
}

/* ------------------------------------------------------------------------ */
/* Numbers                                                                   */

static void test_numeric_bounds(void **state)
{
    (void)state;
    const char *incl = "{\"minimum\":1,\"maximum\":10}";
    expect_valid(incl, "1");
    expect_valid(incl, "10");
    expect_valid(incl, "5.5");
    expect_error(incl, "0.999", "", "must be >= 1");
    expect_error(incl, "10.5", "", "must be <= 10");
    expect_valid(incl, "\"100\""); /* only numbers */

    const char *excl = "{\"exclusiveMinimum\":0,\"exclusiveMaximum\":100}";
    expect_valid(excl, "0.001");
    expect_valid(excl, "99");
    expect_error(excl, "0", "", "must be > 0");
    expect_error(excl, "-1", "", "must be > 0");
    expect_error(excl, "100", "", "must be < 100");

    expect_error("{\"minimum\":0.5}", "0.25", "", "must be >= 0.5");
    expect_error("{\"maximum\":-2.75}", "0", "", "must be <= -2.75");
    expect_error("{\"minimum\":0.1}", "0", "", "must be >= 0.1");
    expect_error("{\"maximum\":1e300}", "1e301", "", "must be <= 1e+300");
    expect_error("{\"exclusiveMaximum\":-0}", "0", "", "must be < 0");
    /* Combined with integer. */
    const char *qty = "{\"type\":\"integer\",\"minimum\":1}";
    expect_valid(qty, "3");
    expect_error(qty, "0", "", "must be >= 1");
    expect_error(qty, "1.5", "", "expected integer, got number");
}

/* ------------------------------------------------------------------------ */
/* Strings                                                                   */

static void test_string_lengths(void **state)
{
    (void)state;
    const char *s = "{\"minLength\":1,\"maxLength\":10}";
    expect_valid(s, "\"a\"");
    expect_valid(s, "\"0123456789\"");
    expect_error(s, "\"\"", "", "must have at least 1 character");
    expect_error(s, "\"0123456789a\"", "", "must have at most 10 characters");
    expect_error("{\"minLength\":3}", "\"ab\"", "", "must have at least 3 characters");
    expect_error("{\"maxLength\":1}", "\"ab\"", "", "must have at most 1 character");
    expect_valid("{\"maxLength\":1}", "5"); /* only strings */
}

static void test_string_lengths_count_code_points(void **state)
{
    (void)state;
    /* "héllo": 6 bytes, 5 code points. */
    expect_valid("{\"maxLength\":5}", "\"h\xc3\xa9llo\"");
    expect_valid("{\"minLength\":5,\"maxLength\":5}", "\"h\\u00e9llo\"");
    expect_error("{\"minLength\":6}", "\"h\xc3\xa9llo\"", "", "must have at least 6 characters");
    /* Three CJK characters: 9 bytes. */
    expect_valid("{\"minLength\":3,\"maxLength\":3}", "\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\"");
    expect_error("{\"minLength\":4}", "\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\"", "",
                 "must have at least 4 characters");
    /* An emoji outside the BMP (4 bytes, a surrogate pair in JSON escapes) is
     * one code point. */
    expect_valid("{\"minLength\":1,\"maxLength\":1}", "\"\xf0\x9f\x98\x80\"");
    expect_valid("{\"minLength\":1,\"maxLength\":1}", "\"\\ud83d\\ude00\"");
    expect_error("{\"maxLength\":1}", "\"\xf0\x9f\x98\x80!\"", "", "must have at most 1 character");
}

static void test_pattern(void **state)
{
    (void)state;
    const char *s = "{\"pattern\":\"^[a-z]+$\"}";
    expect_valid(s, "\"abc\"");
    expect_error(s, "\"abc1\"", "", "must match pattern '^[a-z]+$'");
    expect_error(s, "\"\"", "", "must match pattern '^[a-z]+$'");
    expect_valid(s, "12"); /* only strings */
    /* Like JSON Schema, a pattern is not implicitly anchored. */
    expect_valid("{\"pattern\":\"b+\"}", "\"abbbc\"");
    expect_error("{\"pattern\":\"b+\"}", "\"ac\"", "", "must match pattern 'b+'");
    /* Extended syntax: alternation, intervals, groups. */
    const char *ere = "{\"pattern\":\"^(red|green)-[0-9]{2,3}$\"}";
    expect_valid(ere, "\"red-12\"");
    expect_valid(ere, "\"green-123\"");
    expect_error(ere, "\"blue-12\"", "", "must match pattern '^(red|green)-[0-9]{2,3}$'");
    expect_error(ere, "\"red-1\"", "", "must match pattern '^(red|green)-[0-9]{2,3}$'");
    /* An escaped backslash before a 'd' is fine: a literal "\d". */
    expect_valid("{\"pattern\":\"^a\\\\\\\\d$\"}", "\"a\\\\d\"");
    expect_error("{\"pattern\":\"^a\\\\\\\\d$\"}", "\"a1\"", "", "must match pattern '^a\\\\d$'");
    /* ECMA-262 classes, and code points rather than bytes. */
    expect_valid("{\"pattern\":\"^\\\\d{3}-\\\\w+$\"}", "\"123-ab_9\"");
    expect_error("{\"pattern\":\"^\\\\d{3}$\"}", "\"12a\"", "", "must match pattern '^\\d{3}$'");
    expect_valid("{\"pattern\":\"^.{2}$\"}", "\"\u00e9\u00e8\"");
}

/* ------------------------------------------------------------------------ */
/* Details                                                                   */

static void test_details_capped_at_20(void **state)
{
    (void)state;
    loom__schema *s = compile_ok("{\"items\":{\"type\":\"string\"}}");
    cJSON *v = cJSON_CreateArray();
    for (int i = 0; i < 50; i++)
        cJSON_AddItemToArray(v, cJSON_CreateNumber(i));
    cJSON *details = NULL;
    assert_false(validate_plain(s, v, &details));
    assert_int_equal(cJSON_GetArraySize(details), LOOM__SCHEMA_MAX_DETAILS);
    assert_int_equal(LOOM__SCHEMA_MAX_DETAILS, 20);
    for (int i = 0; i < 20; i++) {
        const cJSON *d = cJSON_GetArrayItem(details, i);
        char path[16];
        snprintf(path, sizeof path, "/%d", i);
        assert_string_equal(cJSON_GetObjectItem(d, "path")->valuestring, path);
        assert_string_equal(cJSON_GetObjectItem(d, "message")->valuestring,
                            "expected string, got number");
    }
    cJSON_Delete(details);

    /* 21 errors: 20 reported; 20 and 19: all reported. */
    for (int n = 21; n >= 19; n--) {
        while (cJSON_GetArraySize(v) > n)
            cJSON_DeleteItemFromArray(v, 0);
        assert_false(validate_plain(s, v, &details));
        assert_int_equal(cJSON_GetArraySize(details), n > 20 ? 20 : n);
        cJSON_Delete(details);
    }
    cJSON_Delete(v);
    loom__schema_free(s);

    /* The cap also holds across keywords and nesting. */
    s = compile_ok("{\"additionalProperties\":false}");
    v = cJSON_CreateObject();
    for (int i = 0; i < 30; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        cJSON_AddNullToObject(v, key);
    }
    assert_false(validate_plain(s, v, &details));
    assert_int_equal(cJSON_GetArraySize(details), 20);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetArrayItem(details, 19), "message")->valuestring,
        "property 'k19' is not allowed");
    cJSON_Delete(details);
    cJSON_Delete(v);
    loom__schema_free(s);
}

static void test_details_optional(void **state)
{
    (void)state;
    loom__schema *s = compile_ok("{\"items\":{\"type\":\"string\"}}");
    cJSON *bad = t_json("[1,2,3]");
    cJSON *good = t_json("[\"a\"]");
    assert_false(validate_plain(s, bad, NULL));
    assert_true(validate_plain(s, good, NULL));
    cJSON *details = (cJSON *)(uintptr_t)1;
    assert_true(validate_plain(s, good, &details));
    assert_null(details); /* always set */
    cJSON_Delete(bad);
    cJSON_Delete(good);
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Depth                                                                     */

static void expect_depth(const char *schema, int n, bool valid, const char *path)
{
    loom__schema *s = compile_ok(schema);
    cJSON *v = nested_arrays(n);
    cJSON *details = NULL;
    assert_int_equal(validate_plain(s, v, &details), valid);
    assert_int_equal(validate_plain(s, v, NULL), valid);
    if (!valid) {
        assert_int_equal(cJSON_GetArraySize(details), 1);
        const cJSON *d = cJSON_GetArrayItem(details, 0);
        assert_string_equal(cJSON_GetObjectItem(d, "path")->valuestring, path);
        assert_string_equal(cJSON_GetObjectItem(d, "message")->valuestring,
                            "nested deeper than 64 levels");
    } else {
        assert_null(details);
    }
    cJSON_Delete(details);
    cJSON_Delete(v);
    loom__schema_free(s);
}

static void test_deep_values(void **state)
{
    (void)state;
    char *p64 = zero_path(64);
    /* 64 nested containers are fine, 65 are not, whatever the schema. */
    expect_depth("true", 64, true, NULL);
    expect_depth("true", 65, false, p64);
    expect_depth("{}", 65, false, p64);
    expect_depth("{\"type\":\"array\"}", 65, false, p64);
    expect_depth("{\"items\":{\"items\":{\"type\":\"array\"}}}", 64, true, NULL);
    expect_depth("{\"items\":{\"items\":{\"type\":\"array\"}}}", 65, false, p64);
    /* Far deeper than any stack would allow recursing into. */
    expect_depth("{\"type\":\"array\"}", 5000, false, p64);
    expect_depth("{\"items\":true}", 5000, false, p64);
    /* Through a $ref (its target walks the value) and next to one. */
    expect_depth("{\"$ref\":\"#/$defs/a\",\"$defs\":{\"a\":{\"type\":\"array\"}}}", 64, true, NULL);
    /* Next to a $ref, under anyOf, through a $ref: invalid (the details may
     * say so twice). */
    char deep[2 * 65 + 1];
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    deep[130] = '\0';
    assert_false(check("{\"$ref\":\"#/$defs/a\",\"$defs\":{\"a\":{\"minItems\":1}},\"maxItems\":1}",
                       deep, NULL));
    assert_false(check("{\"anyOf\":[{\"type\":\"array\"}]}", deep, NULL));
    assert_false(
        check("{\"$ref\":\"#/$defs/a\",\"$defs\":{\"a\":{\"type\":\"array\"}}}", deep, NULL));
    free(p64);

    /* A schema as deep as the value itself. */
    char schema[64 * 12 + 16];
    size_t len = 0;
    for (int i = 0; i < 63; i++)
        len += (size_t)snprintf(schema + len, sizeof schema - len, "{\"items\":");
    len += (size_t)snprintf(schema + len, sizeof schema - len, "{}");
    for (int i = 0; i < 63; i++)
        len += (size_t)snprintf(schema + len, sizeof schema - len, "}");
    expect_depth(schema, 64, true, NULL);
    char *p = zero_path(64);
    expect_depth(schema, 65, false, p);
    expect_depth(schema, 3000, false, p);
    free(p);

    /* Deep objects under additionalProperties. */
    loom__schema *s = compile_ok("{\"additionalProperties\":{\"type\":\"object\"}}");
    cJSON *root = cJSON_CreateObject(), *cur = root;
    for (int i = 0; i < 100; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(cur, "k", o);
        cur = o;
    }
    cJSON *details = NULL;
    assert_false(validate_plain(s, root, &details));
    const cJSON *d = cJSON_GetArrayItem(details, 0);
    char *kp = calloc(64 * 2 + 1, 1);
    for (int i = 0; i < 64; i++)
        memcpy(kp + i * 2, "/k", 2);
    assert_string_equal(cJSON_GetObjectItem(d, "path")->valuestring, kp);
    free(kp);
    cJSON_Delete(details);
    cJSON_Delete(root);
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Compile errors                                                            */

static void test_compile_errors_per_keyword(void **state)
{
    (void)state;
    static const struct {
        const char *schema, *err;
    } cases[] = {
        {"5", "schema: a schema must be an object or a boolean at the root"},
        {"\"x\"", "schema: a schema must be an object or a boolean at the root"},
        {"null", "schema: a schema must be an object or a boolean at the root"},
        {"[]", "schema: a schema must be an object or a boolean at the root"},
        {"{\"oneOf\":[]}", "schema: 'oneOf' must be a non-empty array of schemas at the root"},
        {"{\"$ref\":\"#/x\"}", "schema: cannot resolve '$ref' '#/x' at the root"},
        {"{\"$dynamicRef\":\"#x\"}", "schema: cannot resolve '$dynamicRef' '#x' at the root"},
        {"{\"$defs\":{\"a\":{\"minimum\":\"x\"}},\"$ref\":\"#/$defs/a\"}",
         "schema: 'minimum' must be a number at /$defs/a"},
        {"{\"properties\":{\"a\":{\"Type\":\"string\"}}}",
         "schema: unsupported keyword 'Type' at /properties/a"},
        {"{\"type\":\"string\",\"type\":\"number\"}",
         "schema: keyword 'type' appears twice at the root"},
        /* type */
        {"{\"type\":\"str\"}", "schema: unknown type 'str' in 'type' at the root"},
        {"{\"type\":5}",
         "schema: 'type' must be a type name or an array of type names at the root"},
        {"{\"type\":[]}", "schema: 'type' must not be an empty array at the root"},
        {"{\"type\":[\"string\",1]}",
         "schema: 'type' must be a type name or an array of type names at the root"},
        {"{\"type\":[\"string\",\"float\"]}", "schema: unknown type 'float' in 'type' at the root"},
        {"{\"type\":[\"string\",\"string\"]}", "schema: 'type' lists 'string' twice at the root"},
        /* properties */
        {"{\"properties\":[]}", "schema: 'properties' must be an object at the root"},
        {"{\"properties\":{\"a\":1}}",
         "schema: a schema must be an object or a boolean at /properties/a"},
        {"{\"properties\":{\"a\":{},\"a\":{}}}",
         "schema: property 'a' appears twice in 'properties' at the root"},
        /* required */
        {"{\"required\":\"a\"}", "schema: 'required' must be an array of strings at the root"},
        {"{\"required\":[\"a\",1]}", "schema: 'required' must be an array of strings at the root"},
        {"{\"required\":[\"a\",\"b\",\"a\"]}", "schema: 'required' lists 'a' twice at the root"},
        /* additionalProperties, items */
        {"{\"additionalProperties\":\"no\"}",
         "schema: a schema must be an object or a boolean at /additionalProperties"},
        {"{\"additionalProperties\":{\"minimum\":\"0\"}}",
         "schema: 'minimum' must be a number at /additionalProperties"},
        {"{\"items\":1}", "schema: a schema must be an object or a boolean at /items"},
        {"{\"items\":[{}]}",
         "schema: 'items' must be a schema (tuples are 'prefixItems') at the root"},
        {"{\"items\":{\"foo\":1}}", "schema: unsupported keyword 'foo' at /items"},
        /* counts */
        {"{\"minItems\":-1}", "schema: 'minItems' must be a non-negative integer at the root"},
        {"{\"maxItems\":1.5}", "schema: 'maxItems' must be a non-negative integer at the root"},
        {"{\"minLength\":\"2\"}", "schema: 'minLength' must be a non-negative integer at the root"},
        {"{\"maxLength\":true}", "schema: 'maxLength' must be a non-negative integer at the root"},
        {"{\"maxLength\":1e300}", "schema: 'maxLength' must be a non-negative integer at the root"},
        /* enum, const */
        {"{\"enum\":\"a\"}", "schema: 'enum' must be an array at the root"},
        /* bounds */
        {"{\"minimum\":\"1\"}", "schema: 'minimum' must be a number at the root"},
        {"{\"properties\":{\"age\":{\"minimum\":true}}}",
         "schema: 'minimum' must be a number at /properties/age"},
        {"{\"maximum\":null}", "schema: 'maximum' must be a number at the root"},
        {"{\"exclusiveMinimum\":true}", "schema: 'exclusiveMinimum' must be a number at the root"},
        {"{\"exclusiveMaximum\":[1]}", "schema: 'exclusiveMaximum' must be a number at the root"},
        {"{\"minimum\":1e999}", "schema: 'minimum' must be a number at the root"},
        /* pattern */
        {"{\"pattern\":1}", "schema: 'pattern' must be a string at the root"},
        {"{\"items\":{\"pattern\":null}}", "schema: 'pattern' must be a string at /items"},
        {"{\"pattern\":\"^(a)\\\\1$\"}", "schema: invalid 'pattern' '^(a)\\1$': backreferences "
                                         "are not supported at offset 5 at the root"},
        /* pointers in errors are escaped */
        {"{\"properties\":{\"a/b\":{\"properties\":{\"c~d\":{\"minLength\":-1}}}}}",
         "schema: 'minLength' must be a non-negative integer at /properties/a~1b/properties/c~0d"},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(cases); i++)
        expect_compile_error(cases[i].schema, cases[i].err);
}

/* Compiles {"pattern": pattern}; the error, or "" when it compiles. */
static const char *pattern_error(const char *pattern, char *err, size_t errlen)
{
    cJSON *o = cJSON_CreateObject();
    assert_non_null(cJSON_AddStringToObject(o, "pattern", pattern));
    char *text = cJSON_PrintUnformatted(o);
    assert_non_null(text);
    loom__schema *s = NULL;
    err[0] = '\0';
    loom_err rc = loom__schema_compile(&s, text, err, errlen);
    assert_int_equal(rc, rc == LOOM_OK ? LOOM_OK : LOOM_EINVAL);
    assert_true((rc == LOOM_OK) == (s != NULL));
    loom__schema_free(s);
    cJSON_free(text);
    cJSON_Delete(o);
    return err;
}

static void test_compile_invalid_pattern(void **state)
{
    (void)state;
    const struct {
        const char *pattern, *why;
    } cases[] = {
        {"(", "missing ')' at offset 1"},
        {"a)", "unmatched ')' at offset 1"},
        {"a{2,1}", "numbers out of order in {} quantifier at offset 1"},
        {"[z-a]", "range out of order in character class at offset 4"},
        {"[a", "unterminated character class at offset 2"},
        {"*a", "nothing to repeat before '*' at offset 0"},
        {"a**", "nothing to repeat before '*' (one quantifier per atom) at offset 2"},
        {"a+?+", "nothing to repeat before '+' (one quantifier per atom) at offset 3"},
        {"^*", "nothing to repeat before '*' at offset 1"},
        {"(?=a)", "lookahead and lookbehind are not supported at offset 1"},
        {"(?<!a)b", "lookahead and lookbehind are not supported at offset 1"},
        {"(?<n-1>a)", "invalid group name at offset 1"},
        {"\\q", "unknown escape '\\q' at offset 1"},
        {"a\\", "'\\' ends the pattern at offset 2"},
        {"\\k<n>", "named backreferences are not supported at offset 1"},
        {"\\01", "octal escapes are not supported at offset 1"},
        {"\\x4", "\\x needs two hex digits at offset 2"},
        {"\\u{110000}", "\\u{...} needs a code point of at most 10FFFF at offset 3"},
        {"\\c1", "\\c needs a letter at offset 2"},
        {"a\xff", "the pattern is not valid UTF-8 at offset 1"},
    };
    for (size_t i = 0; i < LOOM__ARRAY_LEN(cases); i++) {
        char err[512], want[512];
        snprintf(want, sizeof want, "schema: invalid 'pattern' '%s': %s at the root",
                 cases[i].pattern, cases[i].why);
        assert_string_equal(pattern_error(cases[i].pattern, err, sizeof err), want);
    }
    char deep[2 * 65 + 2] = "", err[512];
    memset(deep, '(', 65);
    deep[65] = 'a';
    memset(deep + 66, ')', 65);
    const char *e = pattern_error(deep, err, sizeof err);
    assert_non_null(strstr(e, "': groups nested deeper than 64 at offset 64 at the root"));
    deep[0] = 'x'; /* 64 groups and an unmatched ')' */
    assert_non_null(strstr(pattern_error(deep, err, sizeof err), "unmatched ')' at offset 130"));
    expect_compile_error("{\"properties\":{\"p\":{\"pattern\":\"(\"}}}",
                         "schema: invalid 'pattern' '(': missing ')' at offset 1 at /properties/p");
}

/* Regression (fuzz_schema: out of memory, then a timeout): counted and
 * stacked repetitions. The program size is bounded (counted repetitions copy
 * their operand), a quantifier cannot follow a quantifier, and compiling
 * and matching take linear time, so none of these can stall. */
static void test_compile_pattern_too_complex(void **state)
{
    (void)state;
    const char *bad[] = {"((a{100}){100}){100}",  "(x|[a-z]{1000}){1000}", "(a?){20000}",
                         "((b*|c*|d?){500}){50}", "x{1,100000}",           "a{99999999999}"};
    for (size_t i = 0; i < LOOM__ARRAY_LEN(bad); i++) {
        char err[512], want[512];
        snprintf(want, sizeof want,
                 "schema: invalid 'pattern' '%s': too complex: its repetitions expand to more than "
                 "10000 states at the root",
                 bad[i]);
        assert_string_equal(pattern_error(bad[i], err, sizeof err), want);
    }
    /* Accepted, and quick to compile and to run on a long subject. */
    char nested[256] = "";
    for (int i = 0; i < 30; i++)
        strcat(nested, "(");
    strcat(nested, "a");
    for (int i = 0; i < 30; i++)
        strcat(nested, ")+");
    strcat(nested, "$");
    const struct {
        const char *pattern;
        bool matches; /* a run of 20,000 'a' */
    } good[] = {
        {"^[^@]+@[^@]+$", false},
        {"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", false},
        {"(a{100}){99}b", false},
        {"(a{100}){99}", true},
        {"^[A-Z]{3}$", false},
        {"((b*|c*|d?){20}){20}e", false},
        {"a{2,}b", false},
        {"a{2,}", true},
        {"x{1,255}", false},
        {"[]{}+]+", false}, /* ECMA-262: an empty class, then literals */
        {"(a|aa)+$", true},
        {nested, true},
        {"((((((((b*)+)+)+)+)+)+)+)+c", false},
        {"(.*a){20}b", false},
    };
    cJSON *subject = cJSON_CreateString("");
    assert_non_null(subject);
    char *text = malloc(20001);
    assert_non_null(text);
    memset(text, 'a', 20000);
    text[20000] = '\0';
    assert_non_null(cJSON_SetValuestring(subject, text));
    free(text);
    for (size_t i = 0; i < LOOM__ARRAY_LEN(good); i++) {
        char err[512];
        cJSON *o = cJSON_CreateObject();
        assert_non_null(cJSON_AddStringToObject(o, "pattern", good[i].pattern));
        char *schema = cJSON_PrintUnformatted(o);
        loom__schema *s = NULL;
        if (loom__schema_compile(&s, schema, err, sizeof err) != LOOM_OK)
            fail_msg("pattern %s: %s", good[i].pattern, err);
        if (validate_plain(s, subject, NULL) != good[i].matches)
            fail_msg("pattern %s on 20000 'a': expected %s", good[i].pattern,
                     good[i].matches ? "a match" : "none");
        loom__schema_free(s);
        cJSON_free(schema);
        cJSON_Delete(o);
    }
    cJSON_Delete(subject);
}

static void test_compile_depth(void **state)
{
    (void)state;
    /* 64 levels of schemas compile, 65 do not. */
    char text[70 * 12 + 16];
    char expected[70 * 7 + 64];
    for (int levels = 63; levels <= 65; levels++) {
        size_t len = 0;
        for (int i = 1; i < levels; i++)
            len += (size_t)snprintf(text + len, sizeof text - len, "{\"items\":");
        len += (size_t)snprintf(text + len, sizeof text - len, "{}");
        for (int i = 1; i < levels; i++)
            len += (size_t)snprintf(text + len, sizeof text - len, "}");
        if (levels <= 64) {
            loom__schema_free(compile_ok(text));
            continue;
        }
        len =
            (size_t)snprintf(expected, sizeof expected, "schema: nested deeper than 64 levels at ");
        for (int i = 1; i < levels; i++)
            len += (size_t)snprintf(expected + len, sizeof expected - len, "/items");
        expect_compile_error(text, expected);
    }

    /* Deeply nested JSON inside enum/const would be compared recursively. */
    char deep[200];
    size_t len = (size_t)snprintf(deep, sizeof deep, "{\"enum\":[");
    for (int i = 0; i < 65; i++)
        deep[len++] = '[';
    for (int i = 0; i < 65; i++)
        deep[len++] = ']';
    snprintf(deep + len, sizeof deep - len, "]}");
    expect_compile_error(deep, "schema: 'enum' value is nested deeper than 64 levels at the root");
    len = (size_t)snprintf(deep, sizeof deep, "{\"const\":");
    for (int i = 0; i < 65; i++)
        deep[len++] = '[';
    for (int i = 0; i < 65; i++)
        deep[len++] = ']';
    snprintf(deep + len, sizeof deep - len, "}");
    expect_compile_error(deep, "schema: 'const' value is nested deeper than 64 levels at the root");
    /* 64 levels are allowed and compared. */
    len = (size_t)snprintf(deep, sizeof deep, "{\"const\":");
    for (int i = 0; i < 64; i++)
        deep[len++] = '[';
    for (int i = 0; i < 64; i++)
        deep[len++] = ']';
    snprintf(deep + len, sizeof deep - len, "}");
    loom__schema *s = compile_ok(deep);
    cJSON *v = nested_arrays(64);
    assert_true(validate_plain(s, v, NULL));
    cJSON_Delete(v);
    v = nested_arrays(63);
    assert_false(validate_plain(s, v, NULL));
    cJSON_Delete(v);
    loom__schema_free(s);

    /* Annotations may nest deeper: they are never walked. */
    len = (size_t)snprintf(deep, sizeof deep, "{\"default\":");
    for (int i = 0; i < 80; i++)
        deep[len++] = '[';
    for (int i = 0; i < 80; i++)
        deep[len++] = ']';
    snprintf(deep + len, sizeof deep - len, "}");
    loom__schema_free(compile_ok(deep));
}

static void test_compile_arguments(void **state)
{
    (void)state;
    loom__schema *s = (loom__schema *)(uintptr_t)1;
    char err[128] = "";
    assert_int_equal(loom__schema_compile(&s, NULL, err, sizeof err), LOOM_EINVAL);
    assert_null(s);
    assert_string_equal(err, "schema: no schema given");
    assert_int_equal(loom__schema_compile(NULL, "{}", err, sizeof err), LOOM_EINVAL);

    /* Malformed JSON, with the byte offset. */
    expect_compile_error("", "schema: malformed JSON near byte 0");
    expect_compile_error("{\"type\":}", "schema: malformed JSON near byte 8");
    expect_compile_error("{\"type\":\"string\"", "schema: malformed JSON near byte 16");
    expect_compile_error("{} {}", "schema: malformed JSON near byte 3");

    /* err is optional, and truncated to errlen. */
    assert_int_equal(loom__schema_compile(&s, "{\"minimum\":\"x\"}", NULL, 0), LOOM_EINVAL);
    assert_null(s);
    char small[12];
    assert_int_equal(loom__schema_compile(&s, "{\"minimum\":\"x\"}", small, sizeof small),
                     LOOM_EINVAL);
    assert_string_equal(small, "schema: 'mi");
    /* A successful compile clears err. */
    strcpy(err, "stale");
    assert_int_equal(loom__schema_compile(&s, "{}", err, sizeof err), LOOM_OK);
    assert_string_equal(err, "");
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Performance contract: no allocation when the value is valid               */

static size_t allocs;
static void *counting_malloc(size_t n)
{
    allocs++;
    return malloc(n);
}

static void test_no_allocation_when_valid(void **state)
{
    (void)state;
    loom__schema *s = compile_ok(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1,"
        "\"maxLength\":50},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]}},"
        "\"qty\":{\"type\":\"integer\",\"minimum\":1},\"meta\":{\"const\":{\"v\":1}}},"
        "\"required\":[\"name\"],\"additionalProperties\":{\"type\":\"number\"}}");
    cJSON *good = t_json("{\"name\":\"x\",\"tags\":[\"a\",\"b\"],\"qty\":2,\"meta\":{\"v\":1},"
                         "\"extra\":1.5,\"deep\":1}");
    cJSON *bad = t_json("{\"tags\":[\"c\"]}");
    cJSON_Hooks hooks = {.malloc_fn = counting_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    allocs = 0;
    cJSON *details = NULL;
    for (int i = 0; i < 100; i++)
        assert_true(validate_plain(s, good, &details));
    size_t valid_allocs = allocs;
    assert_false(validate_plain(s, bad, &details));
    size_t invalid_allocs = allocs - valid_allocs;
    cJSON_Delete(details);
    cJSON_InitHooks(NULL);
    assert_int_equal(valid_allocs, 0);
    assert_true(invalid_allocs > 0); /* the counter does see the details */
    cJSON_Delete(good);
    cJSON_Delete(bad);
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Draft 2020-12 keywords                                                    */

static void test_applicators(void **state)
{
    (void)state;
    const char *all = "{\"allOf\":[{\"type\":\"integer\"},{\"minimum\":2}]}";
    expect_valid(all, "3");
    expect_error(all, "1", "", "must be >= 2");
    const char *any = "{\"anyOf\":[{\"type\":\"string\"},{\"minimum\":2}]}";
    expect_valid(any, "\"x\"");
    expect_valid(any, "5");
    expect_error(any, "1", "", "must match at least one schema in 'anyOf'");
    const char *one = "{\"oneOf\":[{\"type\":\"integer\"},{\"minimum\":2}]}";
    expect_valid(one, "1");
    expect_valid(one, "2.5");
    expect_error(one, "3", "", "must match exactly one schema in 'oneOf' (matches 2)");
    expect_error(one, "1.5", "", "must match exactly one schema in 'oneOf' (matches 0)");
    expect_error("{\"not\":{\"type\":\"null\"}}", "null", "", "must not match the schema in 'not'");
    const char *cond = "{\"if\":{\"properties\":{\"kind\":{\"const\":\"card\"}}},"
                       "\"then\":{\"required\":[\"number\"]},\"else\":{\"required\":[\"iban\"]}}";
    expect_valid(cond, "{\"kind\":\"card\",\"number\":\"1\"}");
    expect_error(cond, "{\"kind\":\"card\"}", "", "required property 'number' is missing");
    expect_error(cond, "{\"kind\":\"bank\"}", "", "required property 'iban' is missing");
    expect_valid("{\"then\":false}", "1"); /* then without if: ignored */
}

static void test_arrays_2020(void **state)
{
    (void)state;
    const char *tuple =
        "{\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],\"items\":false}";
    expect_valid(tuple, "[\"a\",1]");
    expect_valid(tuple, "[\"a\"]");
    expect_error(tuple, "[\"a\",\"b\"]", "/1", "expected integer, got string");
    expect_error(tuple, "[\"a\",1,2]", "/2", "value is not allowed");
    const char *has = "{\"contains\":{\"type\":\"integer\"},\"minContains\":2,\"maxContains\":3}";
    expect_valid(has, "[1,\"x\",2]");
    expect_error(has, "[1,\"x\"]", "", "must contain at least 2 matching items");
    expect_error(has, "[1,2,3,4]", "", "must contain at most 3 matching items");
    expect_error("{\"contains\":{\"const\":1}}", "[2]", "",
                 "must contain at least 1 matching item");
    expect_valid("{\"contains\":{\"const\":1},\"minContains\":0}", "[]");
    expect_valid("{\"uniqueItems\":true}", "[1,\"1\",[1],{\"a\":1},{\"a\":2},true]");
    expect_error("{\"uniqueItems\":true}", "[{\"a\":1,\"b\":2},3,{\"b\":2,\"a\":1}]", "",
                 "must not contain duplicates (items 0 and 2 are equal)");
    expect_error("{\"uniqueItems\":true}", "[1,1.0]", "",
                 "must not contain duplicates (items 0 and 1 are equal)");
}

static void test_objects_2020(void **state)
{
    (void)state;
    const char *pat = "{\"patternProperties\":{\"^x-\":{\"type\":\"string\"}},"
                      "\"additionalProperties\":false}";
    expect_valid(pat, "{\"x-a\":\"1\"}");
    expect_error(pat, "{\"x-a\":1}", "/x-a", "expected string, got number");
    expect_error(pat, "{\"y\":1}", "", "property 'y' is not allowed");
    expect_error("{\"propertyNames\":{\"maxLength\":3}}", "{\"abcd\":1}", "",
                 "property name 'abcd' is not allowed");
    const char *dep = "{\"dependentRequired\":{\"card\":[\"cvc\"]},"
                      "\"dependentSchemas\":{\"iban\":{\"required\":[\"bic\"]}}}";
    expect_valid(dep, "{}");
    expect_error(dep, "{\"card\":1}", "", "property 'cvc' is required when 'card' is present");
    expect_error(dep, "{\"iban\":1}", "", "required property 'bic' is missing");
    expect_error("{\"minProperties\":2}", "{\"a\":1}", "", "must have at least 2 properties");
    expect_error("{\"maxProperties\":1}", "{\"a\":1,\"b\":2}", "", "must have at most 1 property");
    expect_error("{\"multipleOf\":0.5}", "1.2", "", "must be a multiple of 0.5");
    expect_valid("{\"multipleOf\":0.0001}", "0.0075");
}

static void test_unevaluated(void **state)
{
    (void)state;
    const char *props = "{\"allOf\":[{\"properties\":{\"a\":true}}],"
                        "\"anyOf\":[{\"properties\":{\"b\":true}},{\"required\":[\"c\"]}],"
                        "\"unevaluatedProperties\":false}";
    expect_valid(props, "{\"a\":1,\"b\":2}");
    expect_error(props, "{\"a\":1,\"c\":2}", "", "property 'c' is not allowed");
    const char *items = "{\"prefixItems\":[true],\"if\":{\"prefixItems\":[true,{\"const\":2}]},"
                        "\"unevaluatedItems\":{\"type\":\"string\"}}";
    expect_valid(items, "[1,2,\"x\"]");
    expect_error(items, "[1,3]", "/1", "expected string, got number");
    /* Over 256 members the bitmap is allocated. */
    loom__schema *s = compile_ok("{\"allOf\":[{\"patternProperties\":{\"^p\":true}}],"
                                 "\"unevaluatedProperties\":false}");
    cJSON *big = cJSON_CreateObject();
    for (int i = 0; i < 300; i++) {
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        cJSON_AddNumberToObject(big, key, i);
    }
    assert_true(validate_plain(s, big, NULL));
    cJSON_AddNumberToObject(big, "q", 1);
    cJSON *details = NULL;
    assert_false(validate_plain(s, big, &details));
    assert_true(
        t_json_eq(details, "[{\"path\":\"\",\"message\":\"property 'q' is not allowed\"}]"));
    cJSON_Delete(details);
    cJSON_Delete(big);
    loom__schema_free(s);
}

static void test_refs(void **state)
{
    (void)state;
    const char *tree =
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{"
        "\"v\":{\"type\":\"integer\"},\"kids\":{\"items\":{\"$ref\":\"#/$defs/node\"}}}}},"
        "\"$ref\":\"#/$defs/node\"}";
    expect_valid(tree, "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3}]}]}");
    expect_error(tree, "{\"v\":1,\"kids\":[{\"kids\":[{\"v\":\"3\"}]}]}", "/kids/0/kids/0/v",
                 "expected integer, got string");
    const char *anchor = "{\"$defs\":{\"a\":{\"$anchor\":\"pos\",\"minimum\":0}},"
                         "\"items\":{\"$ref\":\"#pos\"}}";
    expect_error(anchor, "[1,-1]", "/1", "must be >= 0");
    const char *ids =
        "{\"$id\":\"https://x.test/root\",\"items\":{\"$ref\":\"other#/$defs/s\"},"
        "\"$defs\":{\"o\":{\"$id\":\"other\",\"$defs\":{\"s\":{\"type\":\"string\"}}}}}";
    expect_valid(ids, "[\"a\"]");
    expect_error(ids, "[1]", "/0", "expected string, got number");
    /* Escapes in pointers. */
    expect_error("{\"$defs\":{\"a/b\":{\"type\":\"null\"}},\"$ref\":\"#/$defs/a~1b\"}", "1", "",
                 "expected null, got number");
    expect_error("{\"$defs\":{\"c%d\":{\"type\":\"null\"}},\"$ref\":\"#/$defs/c%25d\"}", "1", "",
                 "expected null, got number");
    /* $dynamicRef: the outermost resource with the dynamic anchor wins,
     * so an extension of a generic list tightens its items. */
    loom__schema_set *set = NULL;
    char err[256];
    assert_int_equal(loom__schema_set_create(&set, 0), LOOM_OK);
    assert_int_equal(loom__schema_set_add(set, NULL,
                                          "{\"$id\":\"list\",\"type\":\"array\",\"items\":{"
                                          "\"$dynamicRef\":\"#item\"},\"$defs\":{\"any\":{"
                                          "\"$dynamicAnchor\":\"item\"}}}",
                                          err, sizeof err),
                     LOOM_OK);
    loom__schema *s = NULL;
    assert_int_equal(loom__schema_compile_in(&s, set,
                                             "{\"$id\":\"ints\",\"$ref\":\"list\",\"$defs\":{"
                                             "\"int\":{\"$dynamicAnchor\":\"item\",\"type\":"
                                             "\"integer\"}}}",
                                             err, sizeof err),
                     LOOM_OK);
    cJSON *ints = t_json("[1,2]"), *strs = t_json("[1,\"x\"]");
    assert_true(loom__schema_validate(s, ints, NULL));
    assert_false(validate_plain(s, strs, NULL));
    loom__schema_free(s);
    /* The generic list alone takes anything. */
    assert_int_equal(loom__schema_compile_in(&s, set, "{\"$ref\":\"list\"}", err, sizeof err),
                     LOOM_OK);
    assert_true(loom__schema_validate(s, strs, NULL));
    loom__schema_free(s);
    loom__schema_set_free(set);
    cJSON_Delete(ints);
    cJSON_Delete(strs);
    /* A cycle that consumes nothing is bounded, not a hang. */
    const char *loop = "{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},"
                       "\"$ref\":\"#/$defs/a\"}";
    expect_error(loop, "1", "", "schema recursion deeper than 400 levels");
    expect_compile_error("{\"items\":{\"$ref\":\"#/$defs/nope\"}}",
                         "schema: cannot resolve '$ref' '#/$defs/nope' at /items");
    expect_compile_error("{\"$ref\":\"#/$defs/a\",\"$defs\":{\"a\":{\"items\":{\"Type\":1}}}}",
                         "schema: unsupported keyword 'Type' at /$defs/a/items");
}

/* The details' schemaPath: the failing keyword, through $ref and sets. */
static void test_schema_paths(void **state)
{
    (void)state;
    loom__schema_set *set = NULL;
    char err[256];
    assert_int_equal(loom__schema_set_create(&set, LOOM__SCHEMA_ASSERT_FORMATS), LOOM_OK);
    assert_int_equal(loom__schema_set_add(set, NULL,
                                          "{\"$id\":\"zip\",\"type\":\"string\",\"pattern\":"
                                          "\"^[0-9]{5}$\"}",
                                          err, sizeof err),
                     LOOM_OK);
    loom__schema *s = NULL;
    assert_int_equal(
        loom__schema_compile_in(&s, set,
                                "{\"properties\":{\"a\":{\"minimum\":1},\"z\":{\"$ref\":\"zip\"},"
                                "\"d\":{\"format\":\"date\"}},\"required\":[\"q\"]}",
                                err, sizeof err),
        LOOM_OK);
    loom__schema_set_free(set); /* the schema keeps its own reference */
    cJSON *v = t_json("{\"a\":0,\"z\":\"1\",\"d\":\"2026-02-30\"}");
    cJSON *details = NULL;
    assert_false(loom__schema_validate(s, v, &details));
    if (!t_json_eq(details,
                   "[{\"path\":\"\",\"message\":\"required property 'q' is missing\","
                   "\"schemaPath\":\"/required\"},"
                   "{\"path\":\"/a\",\"message\":\"must be >= 1\",\"schemaPath\":\"/properties/a/"
                   "minimum\"},"
                   "{\"path\":\"/z\",\"message\":\"must match pattern '^[0-9]{5}$'\","
                   "\"schemaPath\":\"zip#/pattern\"},"
                   "{\"path\":\"/d\",\"message\":\"must be a valid date\",\"schemaPath\":"
                   "\"/properties/d/format\"}]")) {
        char *d = cJSON_PrintUnformatted(details);
        fail_msg("details: %s", d);
    }
    cJSON_Delete(details);
    cJSON_Delete(v);
    loom__schema_free(s);
}

static void test_sets(void **state)
{
    (void)state;
    loom__schema_set *set = NULL;
    char err[256];
    assert_int_equal(loom__schema_set_create(&set, 0), LOOM_OK);
    assert_int_equal(loom__schema_set_add(set, NULL, "{\"type\":\"string\"}", err, sizeof err),
                     LOOM_EINVAL);
    assert_string_equal(err, "schema: a shared schema needs an \"$id\"");
    assert_int_equal(loom__schema_set_add(set, NULL, "{\"$id\":\"a\"", err, sizeof err),
                     LOOM_EINVAL);
    assert_int_equal(loom__schema_set_add(set, NULL, "{\"$id\":\"a\"}", err, sizeof err), LOOM_OK);
    assert_int_equal(loom__schema_set_add(set, NULL, "{\"$id\":\"a\"}", err, sizeof err),
                     LOOM_EINVAL);
    assert_string_equal(err, "schema: 'a' is defined twice");
    assert_int_equal(
        loom__schema_set_add(set, "b", "{\"$ref\":\"a\",\"format\":\"date\"}", err, sizeof err),
        LOOM_OK);
    /* Without the format flag, format is an annotation. */
    loom__schema *s = NULL;
    assert_int_equal(loom__schema_compile_in(&s, set, "{\"$ref\":\"b\"}", err, sizeof err),
                     LOOM_OK);
    cJSON *v = t_json("\"not a date\"");
    assert_true(loom__schema_validate(s, v, NULL));
    cJSON_Delete(v);
    loom__schema_free(s);
    /* Not in the set: unresolvable. */
    assert_int_equal(loom__schema_compile(&s, "{\"$ref\":\"a\"}", err, sizeof err), LOOM_EINVAL);
    assert_string_equal(err, "schema: cannot resolve '$ref' 'a' at the root");
    loom__schema_set_free(set);
    loom__schema_set_free(NULL);
}

/* Hostile combinations stop at the work bound, quickly. */
static void test_work_bounds(void **state)
{
    (void)state;
    /* 2^40 branches: d0 -> anyOf[d1, d1] -> ... -> d40 = false. */
    loom__sbuf b = {0};
    loom__sbuf_puts(&b, "{\"$ref\":\"#/$defs/d0\",\"$defs\":{");
    for (int i = 0; i < 40; i++)
        loom__sbuf_printf(&b,
                          "\"d%d\":{\"anyOf\":[{\"$ref\":\"#/$defs/d%d\"},{\"$ref\":"
                          "\"#/$defs/d%d\"}]},",
                          i, i + 1, i + 1);
    loom__sbuf_puts(&b, "\"d40\":false}}");
    loom__schema *s = compile_ok(b.p);
    free(b.p);
    cJSON *v = t_json("1");
    int64_t t0 = loom__mono_ms();
    cJSON *details = NULL;
    assert_false(validate_plain(s, v, &details));
    assert_true(t_json_eq(details, "[{\"path\":\"\",\"message\":\"validation exceeds 10000000 "
                                   "steps\"}]"));
    cJSON_Delete(details);
    assert_false(validate_plain(s, v, NULL));
    int64_t took = loom__mono_ms() - t0;
    assert_true(took < 20000); /* ~1 s on these machines, twice */
    cJSON_Delete(v);
    loom__schema_free(s);

    /* uniqueItems on 200,000 distinct numbers and 20,000 equal-hash-free
     * objects: sorted hashes, not n^2 comparisons. */
    s = compile_ok("{\"uniqueItems\":true}");
    cJSON *nums = cJSON_CreateArray(), *objs = cJSON_CreateArray();
    for (int i = 0; i < 200000; i++)
        cJSON_AddItemToArray(nums, cJSON_CreateNumber(i));
    for (int i = 0; i < 20000; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", i);
        cJSON_AddStringToObject(o, "kind", "same");
        cJSON_AddItemToArray(objs, o);
    }
    t0 = loom__mono_ms();
    assert_true(validate_plain(s, nums, NULL));
    assert_true(validate_plain(s, objs, NULL));
    cJSON_AddItemToArray(nums, cJSON_CreateNumber(7));
    assert_false(validate_plain(s, nums, &details));
    assert_true(t_json_eq(details, "[{\"path\":\"\",\"message\":\"must not contain duplicates "
                                   "(items 7 and 200000 are equal)\"}]"));
    cJSON_Delete(details);
    took = loom__mono_ms() - t0;
    assert_true(took < 10000); /* ~0.1 s */
    cJSON_Delete(nums);
    cJSON_Delete(objs);
    loom__schema_free(s);
}

/* ------------------------------------------------------------------------ */
/* Concurrency                                                               */

typedef struct worker {
    const loom__schema *s;
    const cJSON *good, *bad;
    int failures;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 3000; i++) {
        cJSON *details = NULL;
        if (!validate_plain(w->s, w->good, &details) || details)
            w->failures++;
        if (validate_plain(w->s, w->bad, &details) || !details) {
            w->failures++;
            continue;
        }
        const cJSON *d0 = cJSON_GetArrayItem(details, 0);
        const cJSON *d1 = cJSON_GetArrayItem(details, 1);
        const cJSON *d2 = cJSON_GetArrayItem(details, 2);
        if (cJSON_GetArraySize(details) != 3 ||
            strcmp(cJSON_GetObjectItem(d0, "path")->valuestring, "/name") != 0 ||
            strcmp(cJSON_GetObjectItem(d1, "message")->valuestring,
                   "must match pattern '^[^@]+@[^@]+$'") != 0 ||
            strcmp(cJSON_GetObjectItem(d2, "message")->valuestring,
                   "property 'admin' is not allowed") != 0)
            w->failures++;
        cJSON_Delete(details);
        if (validate_plain(w->s, w->bad, NULL))
            w->failures++;
    }
    return NULL;
}

static void test_concurrent_validation(void **state)
{
    (void)state;
    loom__schema *s = compile_ok(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1},"
        "\"email\":{\"type\":\"string\",\"pattern\":\"^[^@]+@[^@]+$\"}},"
        "\"required\":[\"name\",\"email\"],\"additionalProperties\":false}");
    cJSON *good = t_json("{\"name\":\"Ann\",\"email\":\"ann@example.com\"}");
    cJSON *bad = t_json("{\"name\":\"\",\"email\":\"nope\",\"admin\":true}");
    worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){s, good, bad, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    cJSON_Delete(good);
    cJSON_Delete(bad);
    loom__schema_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boolean_and_empty_schemas),
        cmocka_unit_test(test_annotations_accepted),
        cmocka_unit_test(test_null_schema_and_free),
        cmocka_unit_test(test_type_single),
        cmocka_unit_test(test_type_array),
        cmocka_unit_test(test_absent_value),
        cmocka_unit_test(test_unusual_values),
        cmocka_unit_test(test_properties),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_required_with_properties),
        cmocka_unit_test(test_additional_properties),
        cmocka_unit_test(test_pointer_escaping),
        cmocka_unit_test(test_shop_user),
        cmocka_unit_test(test_items),
        cmocka_unit_test(test_min_max_items),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_const),
        cmocka_unit_test(test_numeric_bounds),
        cmocka_unit_test(test_string_lengths),
        cmocka_unit_test(test_string_lengths_count_code_points),
        cmocka_unit_test(test_pattern),
        cmocka_unit_test(test_details_capped_at_20),
        cmocka_unit_test(test_details_optional),
        cmocka_unit_test(test_deep_values),
        cmocka_unit_test(test_compile_errors_per_keyword),
        cmocka_unit_test(test_compile_invalid_pattern),
        cmocka_unit_test(test_compile_pattern_too_complex),
        cmocka_unit_test(test_compile_depth),
        cmocka_unit_test(test_compile_arguments),
        cmocka_unit_test(test_no_allocation_when_valid),
        cmocka_unit_test(test_concurrent_validation),
        cmocka_unit_test(test_applicators),
        cmocka_unit_test(test_arrays_2020),
        cmocka_unit_test(test_objects_2020),
        cmocka_unit_test(test_unevaluated),
        cmocka_unit_test(test_refs),
        cmocka_unit_test(test_schema_paths),
        cmocka_unit_test(test_sets),
        cmocka_unit_test(test_work_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
