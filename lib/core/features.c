/* The optional parts left out of this build, by URL scheme, so that a URL
 * naming one fails with a sentence saying how to get it rather than with
 * "unsupported scheme". */
#include "core/features.h"

#include <string.h>
#include <strings.h>

#define WITHOUT(part, knob) "loom was built without " part " (" knob "=0)"

static const struct {
    const char *scheme;
    const char *sentence;
} left_out[] = {
#if !LOOM_WITH_MQTT
    {"mqtt", WITHOUT("MQTT", "WITH_MQTT")},
    {"mqtts", WITHOUT("MQTT", "WITH_MQTT")},
#endif
#if !LOOM_WITH_NATS
    {"nats", WITHOUT("NATS", "WITH_NATS")},
    {"tls", WITHOUT("NATS", "WITH_NATS")},
#endif
#if !LOOM_WITH_REDIS
    {"redis", WITHOUT("Redis", "WITH_REDIS")},
#endif
    {NULL, NULL},
};

const char *loom__built_without(const char *url)
{
    const char *colon = url ? strchr(url, ':') : NULL;
    if (!colon)
        return NULL;
    size_t len = (size_t)(colon - url);
    for (size_t i = 0; left_out[i].scheme; i++)
        if (strlen(left_out[i].scheme) == len && strncasecmp(left_out[i].scheme, url, len) == 0)
            return left_out[i].sentence;
    return NULL;
}

const char *loom__built_without_http(void)
{
    return LOOM_WITH_HTTP ? NULL : WITHOUT("the HTTP bridge", "WITH_HTTP");
}
