/* Reading a broker adapter's options: one copy for every adapter. */
#define _GNU_SOURCE
#include "broker/options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

const cJSON *loom__opt_get(const cJSON *o, const char *key)
{
    const cJSON *it = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return it && !cJSON_IsNull(it) ? it : NULL;
}

/* Copies a string option into *out (left alone when absent). */
loom_err loom__opt_str(const cJSON *o, const char *key, const char *path, char **out, char *why,
                        size_t why_len)
{
    const cJSON *it = loom__opt_get(o, key);
    if (!it)
        return LOOM_OK;
    if (!cJSON_IsString(it) || !it->valuestring) {
        snprintf(why, why_len, "broker.%s: expected a string", path);
        return LOOM_ECONFIG;
    }
    if (strlen(it->valuestring) > LOOM__OPT_MAX_STRING) {
        snprintf(why, why_len, "broker.%s: longer than %d bytes", path, LOOM__OPT_MAX_STRING);
        return LOOM_ECONFIG;
    }
    char *s = strdup(it->valuestring);
    if (!s)
        return LOOM_ENOMEM;
    free(*out);
    *out = s;
    return LOOM_OK;
}

loom_err loom__opt_int(const cJSON *o, const char *key, long long min, long long max,
                        long long *out, char *why, size_t why_len)
{
    const cJSON *it = loom__opt_get(o, key);
    if (!it)
        return LOOM_OK;
    long long v;
    if (cJSON_IsNumber(it) && it->valuedouble >= (double)min && it->valuedouble <= (double)max &&
        it->valuedouble == (double)(long long)it->valuedouble) {
        v = (long long)it->valuedouble;
    } else if (!(cJSON_IsString(it) && loom__parse_int(it->valuestring, min, max, &v))) {
        snprintf(why, why_len, "broker.%s: expected an integer from %lld to %lld", key, min, max);
        return LOOM_ECONFIG;
    }
    *out = v;
    return LOOM_OK;
}

loom_err loom__opt_bool(const cJSON *o, const char *key, const char *path, bool *out, char *why,
                         size_t why_len)
{
    const cJSON *it = loom__opt_get(o, key);
    if (!it)
        return LOOM_OK;
    if (!cJSON_IsBool(it)) {
        snprintf(why, why_len, "broker.%s: expected true or false", path);
        return LOOM_ECONFIG;
    }
    *out = cJSON_IsTrue(it);
    return LOOM_OK;
}

/* The first line of a file, without its line ending. */
loom_err loom__opt_first_line(const char *path, char **out, char *why, size_t why_len)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(why, why_len, "broker.password_file: cannot read %s: %s", path, strerror(errno));
        return LOOM_ECONFIG;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    bool err = ferror(f);
    fclose(f);
    if (n < 0) {
        free(line);
        if (err) {
            snprintf(why, why_len, "broker.password_file: cannot read %s", path);
            return LOOM_ECONFIG;
        }
        line = strdup(""); /* an empty file: an empty password */
        if (!line)
            return LOOM_ENOMEM;
        n = 0;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if ((size_t)n != strlen(line) || n > LOOM__OPT_MAX_STRING) {
        free(line);
        snprintf(why, why_len, "broker.password_file: %s: unusable first line", path);
        return LOOM_ECONFIG;
    }
    *out = line;
    return LOOM_OK;
}

