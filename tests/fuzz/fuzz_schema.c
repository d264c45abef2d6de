/* libFuzzer target: schema compilation, then validation of a value. The
 * input is "SCHEMA\0VALUE"; without a NUL the input is used for both.
 * Schemas compile in a set that asserts formats and holds a shared schema
 * with $id "s" (with $defs, an $anchor and a self-reference), so $ref to
 * "s", "s#/$defs/n" and "s#a" resolve. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/schema.h"

static const char shared[] =
    "{\"$id\":\"s\",\"$defs\":{\"n\":{\"$anchor\":\"a\",\"type\":[\"object\",\"integer\"],"
    "\"properties\":{\"k\":{\"$ref\":\"#/$defs/n\"}},\"unevaluatedProperties\":false},"
    "\"d\":{\"format\":\"date-time\"}},\"anyOf\":[{\"$ref\":\"#a\"},{\"uniqueItems\":true}]}";

static loom__schema_set *the_set(void)
{
    static loom__schema_set *set;
    if (!set && loom__schema_set_create(&set, LOOM__SCHEMA_ASSERT_FORMATS) == LOOM_OK &&
        loom__schema_set_add(set, NULL, shared, NULL, 0) != LOOM_OK) {
        loom__schema_set_free(set);
        set = NULL;
    }
    return set;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *value_text = memchr(data, 0, size) ? text + strlen(text) + 1 : text;
    char err[256];
    loom__schema *s = NULL;
    if (loom__schema_compile_in(&s, the_set(), text, err, sizeof err) == LOOM_OK) {
        cJSON *v = cJSON_Parse(value_text);
        cJSON *details = NULL;
        loom__schema_validate(s, v, &details);
        loom__schema_validate(s, NULL, NULL);
        cJSON_Delete(details);
        cJSON_Delete(v);
        loom__schema_free(s);
    }
    free(text);
    return 0;
}
