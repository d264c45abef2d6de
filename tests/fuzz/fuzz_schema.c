/* libFuzzer target: schema compilation, then validation of a value. The
 * input is "SCHEMA\0VALUE"; without a NUL the input is used for both. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/schema.h"

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
    if (loom__schema_compile(&s, text, err, sizeof err) == LOOM_OK) {
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
