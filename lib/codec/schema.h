/* Internal: a validator for a subset of JSON Schema (draft 2020-12 style).
 *
 * Supported keywords: type, properties, required, additionalProperties,
 * items, minItems, maxItems, enum, const, minimum, maximum, exclusiveMinimum,
 * exclusiveMaximum (numbers), minLength, maxLength (Unicode code points),
 * pattern (the ECMA-262 subset of codec/regex.h, unanchored as in JSON Schema),
 * and the boolean schemas true / false. The annotations $schema, $id, title,
 * description, default, examples and format are accepted and ignored. Any
 * other keyword is a compile error, so nobody believes an ignored constraint
 * is enforced.
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

typedef struct loom__schema loom__schema;

/* Compiles schema JSON text (NUL-terminated). On success *out is a new
 * immutable schema (free with loom__schema_free). On failure *out is NULL,
 * the result is LOOM_EINVAL (bad JSON, bad schema, NULL argument) or
 * LOOM_ENOMEM, and err (optional, errlen bytes) gets a one-line reason such
 * as "schema: 'minimum' must be a number at /properties/age". Any thread. */
loom_err loom__schema_compile(loom__schema **out, const char *json_text, char *err, size_t errlen);

/* Validates value against s. value NULL means "absent" and is validated like
 * JSON null. s NULL means "no schema" and accepts everything. Values nested
 * deeper than LOOM_MAX_NESTING (64) containers are invalid.
 *
 * Returns true when valid. details (optional) is always set: NULL when
 * valid, otherwise a new cJSON array (cJSON_Delete it) of at most
 * LOOM__SCHEMA_MAX_DETAILS objects {"path": JSON Pointer into value ("" for
 * the root), "message": short user-facing text}; it may also be NULL when
 * memory ran out while building it. With details NULL, validation stops at
 * the first error.
 *
 * Never modifies value; allocates nothing when value is valid (except what
 * the C library's regexec may allocate for 'pattern'). A compiled schema is
 * immutable: any number of threads may validate with it concurrently. */
bool loom__schema_validate(const loom__schema *s, const cJSON *value, cJSON **details);

/* Accepts NULL. */
void loom__schema_free(loom__schema *s);

#endif
