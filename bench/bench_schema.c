/* JSON Schema validation speed (lib/codec/schema.c) against the old
 * validator: the cases of bench/schema/cases.json (a schema file and a
 * payload file each), validated by loom (--impl loom) or by the validator of
 * the Makefile's SCHEMA_REF_REV (--impl ref: its schema.c and regex.c built
 * from git with their symbols renamed ref_loom__*). bench/schema/ajv/bench.js
 * times ajv the same way on the same files.
 *
 * Per case: the payload is parsed once (parsing is not measured), warm-up
 * for a tenth of --seconds sizes a round to a third of it, then three timed
 * rounds of that many loom__schema_validate(s, value, NULL) calls; the
 * median round gives ns per validation. One JSON line per case (bench.h's
 * fields plus ns_per_op). Cases the reference does not support ("ref":
 * false) are skipped with --impl ref; any other compile error, or a result
 * that differs from the case's "valid", fails the program.
 *
 *   bench_schema [--impl loom|ref] [--dir bench/schema] [--seconds 3]
 *                [--only KEY] [--count N]
 * --count N validates N times per case without timing (callgrind: run with
 * 0 and N, subtract, divide). */
#include "bench.h"

#include <stdbool.h>

#include "codec/schema.h"

/* The old validator, renamed by the Makefile (objcopy --redefine-syms). */
loom_err ref_loom__schema_compile(loom__schema **out, const char *json_text, char *err,
                                  size_t errlen);
bool ref_loom__schema_validate(const loom__schema *s, const cJSON *value, cJSON **details);
void ref_loom__schema_free(loom__schema *s);

typedef struct impl {
    const char *name;
    loom_err (*compile)(loom__schema **, const char *, char *, size_t);
    bool (*validate)(const loom__schema *, const cJSON *, cJSON **);
    void (*free)(loom__schema *);
} impl;

static const impl impls[] = {
    {"loom", loom__schema_compile, loom__schema_validate, loom__schema_free},
    {"ref", ref_loom__schema_compile, ref_loom__schema_validate, ref_loom__schema_free},
};

static char *slurp(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_schema: cannot open %s\n", path);
        exit(2);
    }
    size_t cap = 1 << 16, n = 0, got;
    char *text = malloc(cap);
    while (text && (got = fread(text + n, 1, cap - 1 - n, f)) > 0) {
        n += got;
        if (n == cap - 1)
            text = realloc(text, cap *= 2);
    }
    fclose(f);
    if (!text)
        abort();
    text[n] = '\0';
    return text;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median ns per validation of three rounds sized by a warm-up. */
static double time_case(const impl *im, const loom__schema *s, const cJSON *v, double seconds,
                        long *ops)
{
    long n = 0;
    double t0 = bench_now(), t;
    do {
        for (int k = 0; k < 100; k++)
            im->validate(s, v, NULL);
        n += 100;
    } while ((t = bench_now() - t0) < seconds / 10);
    long round = (long)((double)n / t * seconds / 3) + 1;
    double ns[3];
    for (int r = 0; r < 3; r++) {
        t0 = bench_now();
        for (long k = 0; k < round; k++)
            im->validate(s, v, NULL);
        ns[r] = (bench_now() - t0) * 1e9 / (double)round;
    }
    qsort(ns, 3, sizeof ns[0], cmp_double);
    *ops = round;
    return ns[1];
}

static void run_case(const impl *im, const char *dir, const cJSON *c, double seconds, long count)
{
    const char *key = cJSON_GetStringValue(cJSON_GetObjectItem(c, "key"));
    bool valid = cJSON_IsTrue(cJSON_GetObjectItem(c, "valid"));
    char *schema_text = slurp(dir, cJSON_GetStringValue(cJSON_GetObjectItem(c, "schema")));
    char *payload_text = slurp(dir, cJSON_GetStringValue(cJSON_GetObjectItem(c, "payload")));
    loom__schema *s = NULL;
    char err[256];
    if (im->compile(&s, schema_text, err, sizeof err) != LOOM_OK) {
        fprintf(stderr, "bench_schema: %s: %s does not compile: %s\n", im->name, key, err);
        exit(1);
    }
    cJSON *v = cJSON_Parse(payload_text);
    if (!v || im->validate(s, v, NULL) != valid) {
        fprintf(stderr, "bench_schema: %s: %s: %s\n", im->name, key,
                v ? "validation result differs from the case's \"valid\"" : "bad payload JSON");
        exit(1);
    }
    if (count >= 0) {
        for (long k = 0; k < count; k++)
            im->validate(s, v, NULL);
    } else {
        long ops;
        double ns = time_case(im, s, v, seconds, &ops);
        printf("{\"scenario\":\"schema.%s.%s\",\"ops\":%ld,\"seconds\":%.3f,\"ops_per_s\":%.0f,"
               "\"ns_per_op\":%.1f,\"bytes\":%zu}\n",
               im->name, key, ops, ns * (double)ops / 1e9, 1e9 / ns, ns, strlen(payload_text));
        fflush(stdout);
    }
    cJSON_Delete(v);
    im->free(s);
    free(schema_text);
    free(payload_text);
}

int main(int argc, char **argv)
{
    const impl *im = &impls[0];
    const char *dir = "bench/schema", *only = NULL;
    double seconds = 3;
    long count = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--impl"))
            im = !strcmp(argv[i + 1], "ref") ? &impls[1] : &impls[0];
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--only"))
            only = argv[i + 1];
        else if (!strcmp(argv[i], "--count"))
            count = atol(argv[i + 1]);
    }
    char *manifest = slurp(dir, "cases.json");
    cJSON *doc = cJSON_Parse(manifest);
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases"))
    {
        const char *key = cJSON_GetStringValue(cJSON_GetObjectItem(c, "key"));
        if (!key || (only && strcmp(only, key)))
            continue;
        if (im == &impls[1] && !cJSON_IsTrue(cJSON_GetObjectItem(c, "ref")))
            continue; /* the old validator has no $ref / oneOf */
        run_case(im, dir, c, seconds, count);
    }
    cJSON_Delete(doc);
    free(manifest);
    return 0;
}
