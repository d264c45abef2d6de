/* Internal: the deployment configuration (lib/config/config.c).
 *
 * A loom_config holds one cJSON object with only the values that were set
 * (defaults live with the code that reads them). Every value in it has been
 * validated against the key table in config.c, with its JSON type: ints are
 * numbers, bools booleans, lists arrays of strings, maps objects.
 *
 * Not thread-safe: calls that change a config (load, apply_env, set) must not
 * run concurrently with anything else on it. Read-only use (get, tree, the
 * readers below, clone) from many threads at once is fine.
 */
#ifndef LOOM_CONFIG_CONFIG_H
#define LOOM_CONFIG_CONFIG_H

#include <stdbool.h>

#include "loom.h"

/* Like loom_config_set, with a source label used in the error ("--workers",
 * "environment LOOM_WORKERS"): "SOURCE: reason" instead of "KEY: reason".
 * source NULL behaves exactly like loom_config_set. */
loom_err loom__config_set_from(loom_config *cfg, const char *source, const char *key,
                               const char *value);

/* Convenience readers: the value at key or def when unset (or when cfg is
 * NULL). Values were validated when set, so the types always match. */
const char *loom__config_str(const loom_config *cfg, const char *key, const char *def);
long long loom__config_int(const loom_config *cfg, const char *key, long long def);
bool loom__config_bool(const loom_config *cfg, const char *key, bool def);

/* A deep copy (NULL on ENOMEM or when cfg is NULL). Its error is "". */
loom_config *loom__config_clone(const loom_config *cfg);

#endif
