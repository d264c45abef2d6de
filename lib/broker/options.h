/* Internal: reading a broker adapter's options (the `broker:` subtree). */
#ifndef LOOM_BROKER_OPTIONS_H
#define LOOM_BROKER_OPTIONS_H

#include <stdbool.h>

#include "loom.h"

#define LOOM__OPT_MAX_STRING 65535 /* any string option */

/* The option `key` of o, or NULL when o or the key is absent or null. */
const cJSON *loom__opt_get(const cJSON *o, const char *key);
/* Each reader leaves *out alone when the option is absent, and on a bad
 * value returns LOOM_ECONFIG with "broker.PATH: reason" in why. */
loom_err loom__opt_str(const cJSON *o, const char *key, const char *path, char **out, char *why,
                       size_t why_len);
loom_err loom__opt_int(const cJSON *o, const char *key, long long min, long long max,
                       long long *out, char *why, size_t why_len);
loom_err loom__opt_bool(const cJSON *o, const char *key, const char *path, bool *out, char *why,
                        size_t why_len);
/* The first line of a file (a password file), without its line ending. */
loom_err loom__opt_first_line(const char *path, char **out, char *why, size_t why_len);

#endif
