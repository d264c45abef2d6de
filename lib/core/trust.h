/* Internal: message authenticity (docs/security.md).
 *
 * Each process holds one identity: a name and an Ed25519 key pair
 * (security.key_file / security.key_env). The keyring (security.keyring)
 * lists every identity's public key and the services it may speak for.
 * A message that leaves the process carries one trailing envelope member
 *
 *     ,"sig":"<kind>:<identity>:<base64url>"}
 *
 * over a context and the exact bytes before it: the envelope as encoded,
 * minus its closing brace. The context binds the tag to its direction
 * (command, reply, or to all readers), its signer and, for a MAC, its
 * recipient, so a tag made for one of them verifies for no other
 * ("loom-tag-1" NUL, direction, signer NUL, recipient NUL). kind "m" is a
 * 32-byte BLAKE2b MAC under the key the two identities share (X25519 of one's
 * secret and the other's public key): a command to a service whose identity
 * is known, and the reply to a signed caller; only those two identities hold
 * that key. kind "s" is an Ed25519ph signature (RFC 8032, streamed over the
 * context and the bytes) that anyone with the keyring can check: events,
 * announcements, and messages to identities not in the keyring. The
 * pairwise keys are computed once at load, so the hot path costs one keyed
 * hash per message. */
#ifndef LOOM_CORE_TRUST_H
#define LOOM_CORE_TRUST_H

#include <pthread.h>
#include <stdatomic.h>

#include "codec/msg.h"
#include "loom.h"

#define LOOM__NAME_MAX 64

typedef struct loom__key {
    char name[LOOM__NAME_MAX];
    unsigned char pk[32];     /* Ed25519 public key */
    unsigned char shared[32]; /* MAC key shared with our identity */
    char **services;          /* who it may speak for; NULL = {name} */
    size_t n_services;
} loom__key;

/* Why an incoming message was dropped (counted in /metrics). */
enum {
    LOOM__DROP_UNSIGNED = 0, /* no signature while signing is on */
    LOOM__DROP_BAD,          /* unknown identity or a wrong signature/MAC */
    LOOM__DROP_SENDER,       /* signed by an identity not entitled to the sender */
    LOOM__DROP_REPLAY,       /* seen already, or outside the time window */
    LOOM__DROP_REPLY,        /* a reply from a service that was not called */
    LOOM__DROP_ANNOUNCE,     /* an announcement refused (services, caps) */
    LOOM__DROP_REPLY_TOPIC,  /* a command asking for its answer on a non-reply loom topic */
    LOOM__DROP_N
};

typedef struct loom__trust {
    bool signing;    /* sign what leaves, require signatures on what comes in */
    bool bare_calls; /* with signing: accept plain clients' bare JSON calls */
    char name[LOOM__NAME_MAX];
    unsigned char sk[64], pk[32];
    loom__key *ring;
    size_t n_ring;
    int64_t window_ms; /* replay window around the sender's timestamp */
    /* Replay cache: ids (keyed hash) of verified messages, two generations of
     * one window each; under mu. */
    pthread_mutex_t mu;
    bool mu_ready;
    uint64_t *gen[2];
    size_t gen_count[2], gen_slots[2]; /* a power of two each */
    int64_t gen_start;
    unsigned char cache_key[16]; /* SipHash key of the cache: random per process */
    _Atomic uint64_t dropped[LOOM__DROP_N];
    _Atomic uint64_t verified;
} loom__trust;

/* Which way a message goes, bound into its tag: a command to one service,
 * a reply to one caller, or anything published for many readers (events,
 * announcements; a success response is also its event). */
typedef enum {
    LOOM__DIR_COMMAND = 'c',
    LOOM__DIR_REPLY = 'r',
    LOOM__DIR_ALL = 'a',
} loom__dir;

/* Loads security.* from cfg. LOOM_ECONFIG with a logged reason (never the
 * key itself) when signing is on and the key or keyring is missing or
 * malformed. */
loom_err loom__trust_init(loom__trust *t, const loom_config *cfg, loom_runtime *rt);
void loom__trust_fini(loom__trust *t);

/* Appends the signature trailer to *data (an encoded envelope of m, *len
 * bytes, malloc'd; reallocated here). to_all: published where many read it
 * (events, announcements), so signed rather than MAC'd for one peer. */
loom_err loom__trust_sign(loom__trust *t, const loom_msg *m, bool to_all, char **data, size_t *len);

/* Decodes a wire envelope and checks it. With signing on: the trailer must
 * verify as sent in direction dir (the kind of topic it arrived on) to
 * this identity, the message must be of a type that direction carries, the
 * signer must be entitled to m's sender service (events, commands,
 * replies) and commands, replies and events must be fresh and not
 * replayed: seen before with the same scope (the subscription it arrived
 * for: one message may rightly reach a runtime once per matching
 * subscription, e.g. as a reply and as an event). On success m->verified
 * and m->signer are set. Returns LOOM_OK,
 * LOOM_ESTATE when it is an envelope but refused (counted; *why says why),
 * or the decoder's error (not an envelope: a bare call, or garbage). */
loom_err loom__trust_decode(loom__trust *t, const void *data, size_t len, loom__dir dir,
                            uint64_t scope, loom_msg **out, char *why, size_t why_len);

/* True when identity may speak for service. */
bool loom__trust_allows(const loom__trust *t, const char *identity, const char *service);
void loom__trust_count(loom__trust *t, int reason);

/* Creates an identity: writes "NAME BASE64(secret key)" to key_path (mode
 * 0600, refusing to overwrite) and the keyring line "NAME BASE64(public
 * key)" to line (at least 128 bytes). */
loom_err loom__trust_keygen(const char *name, const char *key_path, char *line, size_t n);

/* The verification path alone, for the fuzz target: parses the trailer of
 * data and checks it against t; no decode. */
loom_err loom__trust_verify_bytes(loom__trust *t, const void *data, size_t len, loom__dir dir,
                                  const loom__key **signer, size_t *signed_len);

/* The replay cache's hash of (id, scope): SipHash-2-4 under t->cache_key,
 * so nobody outside the process can choose ids that collide or crowd one
 * probe sequence. Exposed for tests. */
uint64_t loom__trust_id_hash(const loom__trust *t, const char *id, uint64_t scope);

#endif
