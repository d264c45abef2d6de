/* Internal: a JSON Schema draft 2020-12 validator.
 *
 * Every keyword of the core, applicator, unevaluated and validation
 * vocabularies: type, enum, const, the number, string,
 * array and object bounds, multipleOf, pattern and patternProperties (the
 * ECMA-262 subset of codec/regex.h, \p{...} included), properties,
 * additionalProperties, propertyNames, required, dependentRequired,
 * dependentSchemas, prefixItems, items, contains/minContains/maxContains,
 * uniqueItems, allOf, anyOf, oneOf, not, if/then/else,
 * unevaluatedProperties, unevaluatedItems, $ref (JSON Pointer, $anchor and
 * $id targets, inside the schema and across the documents of a
 * loom__schema_set), $dynamicRef / $dynamicAnchor, $defs and the boolean
 * schemas. "format" is an
 * annotation unless the set asserts formats (codec/format.h lists them).
 * Annotations are accepted and kept in the document: $schema, $id,
 * $comment, $vocabulary, title, description,
 * default, examples, deprecated, readOnly, writeOnly, contentEncoding,
 * contentMediaType, contentSchema and any keyword starting with "x-". Any
 * other keyword is a compile error, so nobody believes an ignored
 * constraint is enforced.
 */
#ifndef LOOM_CODEC_SCHEMA_H
#define LOOM_CODEC_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include "loom.h"

/* Schemas may nest at most this many subschemas deep (root = 1). */
#define LOOM__SCHEMA_MAX_DEPTH 64
/* At most this many details are reported by one validation. */
#define LOOM__SCHEMA_MAX_DETAILS 20
/* Subschema evaluations nested inside one another ($ref chains included);
 * deeper is invalid ("schema recursion ..."): it bounds $ref cycles. */
#define LOOM__SCHEMA_MAX_CALLS 400
/* Subschema evaluations plus value comparisons in one validation; beyond
 * it the value is invalid ("validation exceeds ..."): it bounds hostile
 * combinations (nested anyOf through $ref, uniqueItems of big objects). */
#define LOOM__SCHEMA_MAX_WORK 10000000

/* loom__schema_set flags. */
enum { LOOM__SCHEMA_ASSERT_FORMATS = 1 };

typedef struct loom__schema loom__schema;

/* Shared documents that schemas compiled "in" the set may $ref, by $id or
 * by the URI they are added under. Reference counted: every schema
 * compiled in it keeps it alive, so free it whenever you are done adding. */
typedef struct loom__schema_set loom__schema_set;

loom_err loom__schema_set_create(loom__schema_set **out, unsigned flags);

/* Adds a document (JSON text). uri names it; NULL uses its "$id", which
 * is then required. The document is indexed, not compiled:
 * loom__schema_compile_in reports its errors when it is used (compile it
 * alone to check it). LOOM_EINVAL (bad JSON, no name, a name taken) with a
 * reason in err, LOOM_ENOMEM. Not while compiling in the set. */
loom_err loom__schema_set_add(loom__schema_set *set, const char *uri, const char *json_text,
                              char *err, size_t errlen);

/* Drops the caller's reference. Accepts NULL. */
void loom__schema_set_free(loom__schema_set *set);

/* Compiles schema JSON text (NUL-terminated), resolving $ref also in set
 * (optional) and asserting "format" when the set says so. On success *out
 * is a new immutable schema (free with loom__schema_free). On failure *out
 * is NULL, the result is LOOM_EINVAL (bad JSON, bad schema, unresolvable
 * $ref, NULL argument) or LOOM_ENOMEM, and err (optional, errlen bytes)
 * gets a one-line reason such as "schema: 'minimum' must be a number at
 * /properties/age" (the JSON Pointer of the subschema holding the bad
 * keyword). Any thread. */
loom_err loom__schema_compile_in(loom__schema **out, loom__schema_set *set, const char *json_text,
                                 char *err, size_t errlen);

/* loom__schema_compile_in without a set. */
loom_err loom__schema_compile(loom__schema **out, const char *json_text, char *err, size_t errlen);

/* Validates value against s. value NULL means "absent" and is validated like
 * JSON null. s NULL means "no schema" and accepts everything. Values nested
 * deeper than LOOM_MAX_NESTING (64) containers are invalid.
 *
 * Returns true when valid. details (optional) is always set: NULL when
 * valid, otherwise a new cJSON array (cJSON_Delete it) of at most
 * LOOM__SCHEMA_MAX_DETAILS objects {"path": JSON Pointer into value ("" for
 * the root), "message": short user-facing text, "schemaPath": JSON Pointer
 * of the failing keyword in the schema (prefixed "URI#" in a shared
 * document)}; it may also be NULL when memory ran out while building it.
 * With details NULL, validation stops at the first error.
 *
 * Never modifies value. Allocates nothing when value is valid except for
 * unevaluatedProperties / unevaluatedItems on containers of more than 256
 * members and uniqueItems on arrays of more than 16 items. A compiled
 * schema is immutable: any number of threads may validate with it
 * concurrently. */
bool loom__schema_validate(const loom__schema *s, const cJSON *value, cJSON **details);

/* Accepts NULL. */
void loom__schema_free(loom__schema *s);

#endif
