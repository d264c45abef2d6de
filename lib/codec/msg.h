/* Internal: the decoded envelope. Immutable once published; refcounted. */
#ifndef LOOM_CODEC_MSG_H
#define LOOM_CODEC_MSG_H

#include <stdatomic.h>

#include "loom.h"

#define LOOM_ID_LEN 32
#define LOOM_PROTOCOL_VERSION 1
/* Limits enforced by the decoder (and by the core on encode). */
#define LOOM_MAX_NESTING 64 /* JSON depth inside payloads */
#define LOOM_MAX_STRING 1024 /* any envelope string field except payloads */

struct loom_msg {
    atomic_int refs;
    loom_msg_type type;
    char id[LOOM_ID_LEN + 1];             /* always set */
    char trace_id[LOOM_ID_LEN + 1];       /* "" = none */
    char correlation_id[LOOM_ID_LEN + 1]; /* "" = none */
    int64_t timestamp;                    /* epoch ms */
    int64_t deadline;                     /* epoch ms, 0 = none */
    /* Owned strings, NULL = absent. */
    char *content_type;
    char *content_encoding;
    char *principal_id;
    char *tenant_id;
    char *event_name;
    char *reply_to;
    char *info_type; /* LOOM_MSG_INFO: the full messageType ("infoServiceDrain", ...) */
    loom_address sender;   /* fields are owned (cast away const to free) */
    loom_address receiver;
    /* command: payload.payload / payload.parameter; success & custom: payload */
    cJSON *payload;
    cJSON *parameter;
    /* error response */
    int status;
    char *error_message;
    cJSON *error_data;
    bool handled;
    /* Trust (lib/core/trust.c). verified: made in this process, or its
     * signature checked; signer: the identity that signed it (received);
     * peer: the identity an outgoing reply is for (the request's signer). */
    bool verified;
    char *signer;
    char *peer;
    /* Short strings live here (one allocation per message); longer ones
     * are malloc'd. A string inside the arena is never freed by itself. */
    uint16_t arena_used;
    char arena[256];
};

/* A new message of the given type: refs 1, fresh id, timestamp now, every
 * other field empty. NULL on allocation failure. */
loom_msg *loom__msg_new(loom_msg_type type);
/* Replaces a string field of m with a copy of v (NULL clears). */
loom_err loom__msg_set(loom_msg *m, char **field, const char *v);
/* Sets all four fields of an address of m (each copied, NULL allowed). */
loom_err loom__msg_set_address(loom_msg *m, loom_address *a, const char *service,
                               const char *version, const char *target, const char *instance);
/* An error response correlated to request (which may be NULL): status,
 * message copied, data taken over only when non-NULL is returned. NULL on
 * allocation failure. */
loom_msg *loom__msg_error_for(const loom_msg *request, int status, const char *message,
                              cJSON *data, bool handled);
/* A success response correlated to request; result taken over only when
 * non-NULL is returned. */
loom_msg *loom__msg_success_for(const loom_msg *request, cJSON *result);

#endif
