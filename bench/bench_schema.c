/* JSON Schema validation speed (lib/codec/schema.c): validations per
 * second of valid values, for a draft-7-style object schema (the keywords
 * loom always had), a draft 2020-12 schema ($ref, allOf, if/then,
 * unevaluatedProperties, shared via $defs) and uniqueItems on 1,000
 * numbers. Single thread; prints one line per case.
 *   make build/release/bench/bench_schema && build/release/bench/bench_schema */
#include "bench.h"

#include "codec/schema.h"

static const struct {
    const char *name, *schema, *value;
} cases[] = {
    {"object",
     "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"minLength\":1,"
     "\"maxLength\":100},\"email\":{\"type\":\"string\",\"pattern\":\"^[^@]+@[^@]+$\"},"
     "\"age\":{\"type\":\"integer\",\"minimum\":0},\"tags\":{\"type\":\"array\",\"items\":{"
     "\"enum\":[\"a\",\"b\",\"c\"]}}},\"required\":[\"name\",\"email\"],"
     "\"additionalProperties\":false}",
     "{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"age\":36,\"tags\":[\"a\",\"c\"]}"},
    {"2020-12",
     "{\"$defs\":{\"name\":{\"type\":\"string\",\"minLength\":1},\"base\":{\"properties\":{"
     "\"name\":{\"$ref\":\"#/$defs/name\"},\"email\":{\"type\":\"string\"}}}},"
     "\"allOf\":[{\"$ref\":\"#/$defs/base\"}],\"if\":{\"required\":[\"age\"]},"
     "\"then\":{\"properties\":{\"age\":{\"type\":\"integer\",\"minimum\":0}}},"
     "\"properties\":{\"tags\":{\"type\":\"array\",\"uniqueItems\":true}},"
     "\"required\":[\"name\",\"email\"],\"unevaluatedProperties\":false}",
     "{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"age\":36,\"tags\":[\"a\",\"c\"]}"},
    {"unique-1000", "{\"uniqueItems\":true}", NULL},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loom__schema *s = NULL;
        char err[256];
        if (loom__schema_compile(&s, cases[i].schema, err, sizeof err) != LOOM_OK) {
            printf("%s: %s\n", cases[i].name, err);
            continue; /* the older validator refuses the 2020-12 case */
        }
        cJSON *v = NULL;
        if (cases[i].value) {
            v = cJSON_Parse(cases[i].value);
        } else {
            v = cJSON_CreateArray();
            for (int k = 0; k < 1000; k++)
                cJSON_AddItemToArray(v, cJSON_CreateNumber(k * 7));
        }
        long n = 0;
        double t0 = bench_now(), t;
        do {
            for (int k = 0; k < 1000; k++)
                if (!loom__schema_validate(s, v, NULL))
                    abort();
            n += 1000;
        } while ((t = bench_now() - t0) < 1.0);
        printf("%-12s %10.0f validations/s  %7.3f us each\n", cases[i].name, n / t, t / n * 1e6);
        cJSON_Delete(v);
        loom__schema_free(s);
    }
    return 0;
}
