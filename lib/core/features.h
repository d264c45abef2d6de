/* Internal: the optional parts this build contains (make WITH_MQTT=0 ...,
 * docs/abi.md "Build options"). Each LOOM_WITH_* is 1 when the part is
 * compiled in; the Makefile passes all of them, the defaults here serve
 * other build systems. */
#ifndef LOOM_CORE_FEATURES_H
#define LOOM_CORE_FEATURES_H

#include <stddef.h>

#ifndef LOOM_WITH_MQTT
#define LOOM_WITH_MQTT 1
#endif
#ifndef LOOM_WITH_NATS
#define LOOM_WITH_NATS 1
#endif
#ifndef LOOM_WITH_REDIS
#define LOOM_WITH_REDIS 1
#endif
#ifndef LOOM_WITH_HTTP
#define LOOM_WITH_HTTP 1
#endif

/* When the scheme of url (the text before ':') belongs to a built-in
 * broker adapter or store that this build left out: the sentence to log,
 * "loom was built without MQTT (WITH_MQTT=0)"; NULL otherwise. */
const char *loom__built_without(const char *url);

/* The same for the HTTP bridge: the sentence, or NULL when it is built in. */
const char *loom__built_without_http(void);

#endif
