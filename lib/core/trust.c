/* Message authenticity: keys, the keyring, signing, verification and the
 * replay cache (the design is at the top of trust.h and in
 * docs/security.md).
 *
 * Everything loaded at init is read-only afterwards, so signing and
 * verifying take no lock; only the replay cache has one (t->mu), held for
 * a hash lookup. Secret keys never reach a log line or an error message. */
#define _GNU_SOURCE
#include "core/trust.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "core/util.h"

#define TRAILER_HEAD ",\"sig\":\""
#define TRAILER_HEAD_LEN 8
#define MAC_LEN 32
#define CACHE_SLOTS (1u << 16)     /* a generation's first size; doubles at 3/4 full */
#define CACHE_MAX_SLOTS (1u << 22) /* and no further (32 MiB): then new ids are refused */
#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING

static bool name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n >= LOOM__NAME_MAX)
        return false;
    for (; *s; s++)
        if (!name_char((unsigned char)*s))
            return false;
    return true;
}

static const loom__key *find_key(const loom__trust *t, const char *name, size_t n);

/* --- files ------------------------------------------------------------------ */

/* Reads a small text file (keys, keyring) whole. */
static char *slurp(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* A secret key file others can read is refused, as ssh refuses one: the
 * key may already be copied, and starting anyway would hide that. A file
 * that cannot be stat'ed is left to the read that follows. */
static bool key_file_private(const char *path, loom_runtime *rt)
{
    struct stat st;
    if (stat(path, &st) != 0 || !(st.st_mode & 077))
        return true;
    loom_runtime_log(rt, LOOM_LOG_ERROR,
                     "security.key_file: %s is accessible by others (mode %04o): the secret key "
                     "must be private, run chmod 600 %s (and make a new key if it may have been "
                     "copied)",
                     path, (unsigned)(st.st_mode & 07777), path);
    return false;
}

static bool decode_b64(const char *s, unsigned char *out, size_t want)
{
    size_t got = 0;
    return sodium_base642bin(out, want, s, strlen(s), NULL, &got, NULL,
                             sodium_base64_VARIANT_ORIGINAL) == 0 &&
           got == want;
}

/* "NAME BASE64(secret key)" from a file or an environment variable. */
static loom_err load_secret(loom__trust *t, const char *text, const char *where, loom_runtime *rt)
{
    char name[LOOM__NAME_MAX + 1], b64[128];
    bool ok = sscanf(text, " %64s %127s", name, b64) == 2 && valid_name(name) &&
              decode_b64(b64, t->sk, sizeof t->sk);
    sodium_memzero(b64, sizeof b64);
    if (!ok) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                         "%s: expected \"NAME BASE64-SECRET-KEY\" (make one with --keygen)", where);
        return LOOM_ECONFIG;
    }
    loom__strlcpy(t->name, name, sizeof t->name);
    crypto_sign_ed25519_sk_to_pk(t->pk, t->sk);
    return LOOM_OK;
}

static loom_err ring_add_line(loom__trust *t, char *line, const char *path, int lineno,
                              loom_runtime *rt)
{
    char *save = NULL, *name = strtok_r(line, " \t\r", &save);
    if (!name || name[0] == '#')
        return LOOM_OK;
    char *b64 = strtok_r(NULL, " \t\r", &save);
    loom__key k = {0};
    if (!valid_name(name) || !b64 || !decode_b64(b64, k.pk, sizeof k.pk)) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                         "%s:%d: expected \"NAME BASE64-PUBLIC-KEY [SERVICE...]\"", path, lineno);
        return LOOM_ECONFIG;
    }
    loom__strlcpy(k.name, name, sizeof k.name);
    for (char *s; (s = strtok_r(NULL, " \t\r", &save));) {
        char **v = realloc(k.services, (k.n_services + 1) * sizeof *v);
        if (!v || !(v[k.n_services] = strdup(s))) {
            free(v ? v : k.services);
            return LOOM_ENOMEM;
        }
        k.services = v;
        k.n_services++;
    }
    /* The MAC key shared with our identity: X25519(our secret, its public). */
    unsigned char xsk[32], xpk[32], dh[32];
    if (crypto_sign_ed25519_sk_to_curve25519(xsk, t->sk) != 0 ||
        crypto_sign_ed25519_pk_to_curve25519(xpk, k.pk) != 0 ||
        crypto_scalarmult(dh, xsk, xpk) != 0) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "%s:%d: not a valid Ed25519 public key", path, lineno);
        for (size_t i = 0; i < k.n_services; i++)
            free(k.services[i]);
        free(k.services);
        sodium_memzero(xsk, sizeof xsk);
        return LOOM_ECONFIG;
    }
    /* Both ends hash the same bytes: dh, then the two public keys in order. */
    const unsigned char *lo = memcmp(t->pk, k.pk, 32) <= 0 ? t->pk : k.pk;
    const unsigned char *hi = lo == t->pk ? k.pk : t->pk;
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof k.shared);
    crypto_generichash_update(&st, dh, sizeof dh);
    crypto_generichash_update(&st, lo, 32);
    crypto_generichash_update(&st, hi, 32);
    crypto_generichash_final(&st, k.shared, sizeof k.shared);
    sodium_memzero(xsk, sizeof xsk);
    sodium_memzero(dh, sizeof dh);
    loom__key *ring = realloc(t->ring, (t->n_ring + 1) * sizeof *ring);
    if (!ring)
        return LOOM_ENOMEM;
    t->ring = ring;
    t->ring[t->n_ring++] = k;
    return LOOM_OK;
}

static loom_err load_ring(loom__trust *t, const char *path, loom_runtime *rt)
{
    char *text = slurp(path, 1 << 20);
    if (!text) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "security.keyring: cannot read %s", path);
        return LOOM_ECONFIG;
    }
    loom_err err = LOOM_OK;
    int lineno = 1;
    for (char *line = text; line && err == LOOM_OK; lineno++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        err = ring_add_line(t, line, path, lineno, rt);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (err == LOOM_OK && !t->n_ring) {
        loom_runtime_log(rt, LOOM_LOG_ERROR, "security.keyring: %s lists no key", path);
        err = LOOM_ECONFIG;
    }
    return err;
}

loom_err loom__trust_init(loom__trust *t, const loom_config *cfg, loom_runtime *rt)
{
    memset(t, 0, sizeof *t);
    t->signing = loom__config_bool(cfg, "security.signing", false);
    t->bare_calls = loom__config_bool(cfg, "security.bare_calls", !t->signing);
    t->window_ms = loom__config_int(cfg, "security.replay_window_ms", 60000);
    if (!t->signing)
        return LOOM_OK;
    if (sodium_init() < 0)
        return LOOM_ENOMEM;
    const char *file = loom__config_str(cfg, "security.key_file", NULL);
    const char *env = loom__config_str(cfg, "security.key_env", NULL);
    const char *ring = loom__config_str(cfg, "security.keyring", NULL);
    const char *env_val = env ? getenv(env) : NULL;
    if ((!file && !env_val) || !ring) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                         "security.signing is on: set security.key_file (or security.key_env "
                         "naming a set variable) and security.keyring");
        return LOOM_ECONFIG;
    }
    loom_err err;
    if (env_val) {
        err = load_secret(t, env_val, env, rt);
    } else {
        if (!key_file_private(file, rt))
            return LOOM_ECONFIG;
        char *text = slurp(file, 4096);
        if (!text) {
            loom_runtime_log(rt, LOOM_LOG_ERROR, "security.key_file: cannot read %s", file);
            return LOOM_ECONFIG;
        }
        err = load_secret(t, text, file, rt);
        sodium_memzero(text, strlen(text));
        free(text);
    }
    if (err == LOOM_OK)
        err = load_ring(t, ring, rt);
    if (err != LOOM_OK)
        return err;
    /* Our own announcements come back to us: we must be able to check them. */
    const loom__key *self = find_key(t, t->name, strlen(t->name));
    if (!self || memcmp(self->pk, t->pk, sizeof t->pk) != 0) {
        loom_runtime_log(rt, LOOM_LOG_ERROR,
                         "security.keyring: %s does not list this process's identity '%s' with "
                         "its public key",
                         ring, t->name);
        return LOOM_ECONFIG;
    }
    randombytes_buf(t->cache_key, sizeof t->cache_key);
    pthread_mutex_init(&t->mu, NULL);
    t->mu_ready = true;
    t->gen[0] = calloc(CACHE_SLOTS, sizeof(uint64_t));
    t->gen[1] = calloc(CACHE_SLOTS, sizeof(uint64_t));
    t->gen_slots[0] = t->gen_slots[1] = CACHE_SLOTS;
    if (!t->gen[0] || !t->gen[1])
        return LOOM_ENOMEM;
    t->gen_start = loom__mono_ms();
    return LOOM_OK;
}

void loom__trust_fini(loom__trust *t)
{
    for (size_t i = 0; i < t->n_ring; i++) {
        for (size_t j = 0; j < t->ring[i].n_services; j++)
            free(t->ring[i].services[j]);
        free(t->ring[i].services);
        sodium_memzero(t->ring[i].shared, sizeof t->ring[i].shared);
    }
    free(t->ring);
    free(t->gen[0]);
    free(t->gen[1]);
    if (t->mu_ready)
        pthread_mutex_destroy(&t->mu);
    sodium_memzero(t->sk, sizeof t->sk);
    t->ring = NULL;
    t->n_ring = 0;
}

/* --- keyring lookups ------------------------------------------------------------ */

static const loom__key *find_key(const loom__trust *t, const char *name, size_t n)
{
    for (size_t i = 0; i < t->n_ring; i++)
        if (strncmp(t->ring[i].name, name, n) == 0 && t->ring[i].name[n] == '\0')
            return &t->ring[i];
    return NULL;
}

static bool key_serves(const loom__key *k, const char *service)
{
    if (!k->services)
        return strcmp(k->name, service) == 0;
    for (size_t i = 0; i < k->n_services; i++)
        if (strcmp(k->services[i], service) == 0)
            return true;
    return false;
}

bool loom__trust_allows(const loom__trust *t, const char *identity, const char *service)
{
    const loom__key *k = identity ? find_key(t, identity, strlen(identity)) : NULL;
    return k && service && key_serves(k, service);
}

/* The identity a message is for, when it has exactly one reader: a
 * command's receiver service, a reply's caller. NULL: sign for everyone. */
static const loom__key *peer_of(const loom__trust *t, const loom_msg *m)
{
    if (m->type == LOOM_MSG_COMMAND && m->receiver.service) {
        for (size_t i = 0; i < t->n_ring; i++)
            if (key_serves(&t->ring[i], m->receiver.service))
                return &t->ring[i];
        return NULL;
    }
    if ((m->type == LOOM_MSG_SUCCESS || m->type == LOOM_MSG_ERROR) && m->peer)
        return find_key(t, m->peer, strlen(m->peer));
    return NULL;
}

void loom__trust_count(loom__trust *t, int reason)
{
    if (reason >= 0 && reason < LOOM__DROP_N)
        atomic_fetch_add_explicit(&t->dropped[reason], 1, memory_order_relaxed);
}

/* --- signing ---------------------------------------------------------------------- */

/* The context a tag covers before the bytes (trust.h): "loom-tag-1" NUL,
 * direction, signer NUL, recipient NUL ("" for many readers). */
#define TAG_DOMAIN "loom-tag-1"
#define TAG_CTX_MAX (sizeof TAG_DOMAIN + 1 + 2 * LOOM__NAME_MAX)

static size_t tag_context(unsigned char out[TAG_CTX_MAX], loom__dir dir, const char *signer,
                          size_t signer_len, const char *recipient)
{
    size_t n = sizeof TAG_DOMAIN, rl = strlen(recipient);
    memcpy(out, TAG_DOMAIN, n); /* with its NUL */
    out[n++] = (unsigned char)dir;
    memcpy(out + n, signer, signer_len);
    n += signer_len;
    out[n++] = '\0';
    memcpy(out + n, recipient, rl);
    n += rl;
    out[n++] = '\0';
    return n;
}

/* The tag of [data, len) sent by signer to peer (NULL: to all, signed). */
static void make_tag(const loom__trust *t, const loom__key *peer, loom__dir dir, const char *data,
                     size_t len, const char *signer, size_t signer_len, const char *recipient,
                     unsigned char *tag)
{
    unsigned char ctx[TAG_CTX_MAX];
    size_t cl = tag_context(ctx, dir, signer, signer_len, recipient);
    if (peer) {
        crypto_generichash_state st;
        crypto_generichash_init(&st, peer->shared, sizeof peer->shared, MAC_LEN);
        crypto_generichash_update(&st, ctx, cl);
        crypto_generichash_update(&st, (const unsigned char *)data, len);
        crypto_generichash_final(&st, tag, MAC_LEN);
    } else {
        crypto_sign_state st;
        crypto_sign_init(&st);
        crypto_sign_update(&st, ctx, cl);
        crypto_sign_update(&st, (const unsigned char *)data, len);
        crypto_sign_final_create(&st, tag, NULL, t->sk);
    }
}

/* The direction a message is sent in; to_all: published for many readers. */
static loom__dir dir_of(const loom_msg *m, bool to_all)
{
    if (to_all)
        return LOOM__DIR_ALL;
    if (m->type == LOOM_MSG_COMMAND)
        return LOOM__DIR_COMMAND;
    if (m->type == LOOM_MSG_SUCCESS || m->type == LOOM_MSG_ERROR)
        return LOOM__DIR_REPLY;
    return LOOM__DIR_ALL;
}

loom_err loom__trust_sign(loom__trust *t, const loom_msg *m, bool to_all, char **data, size_t *len)
{
    if (!t->signing)
        return LOOM_OK;
    const loom__key *peer = to_all ? NULL : peer_of(t, m);
    unsigned char tag[crypto_sign_BYTES];
    size_t tag_len = peer ? MAC_LEN : crypto_sign_BYTES;
    size_t body = *len - 1; /* without the closing brace */
    size_t name_len = strlen(t->name);
    make_tag(t, peer, dir_of(m, to_all), *data, body, t->name, name_len, peer ? peer->name : "",
             tag);
    size_t b64_len = sodium_base64_ENCODED_LEN(tag_len, B64);
    size_t total = body + TRAILER_HEAD_LEN + 2 + name_len + 1 + b64_len + 2;
    char *p = realloc(*data, total + 1);
    if (!p)
        return LOOM_ENOMEM;
    char *w = p + body;
    memcpy(w, TRAILER_HEAD, TRAILER_HEAD_LEN);
    w += TRAILER_HEAD_LEN;
    *w++ = peer ? 'm' : 's';
    *w++ = ':';
    memcpy(w, t->name, name_len);
    w += name_len;
    *w++ = ':';
    sodium_bin2base64(w, b64_len, tag, tag_len, B64);
    w += strlen(w);
    *w++ = '"';
    *w++ = '}';
    *w = '\0';
    *data = p;
    *len = (size_t)(w - p);
    return LOOM_OK;
}

/* --- verification ----------------------------------------------------------------- */

/* Finds the trailer: on success *k is where ",\"sig\"" starts and [v, v_len)
 * is the quoted value. */
static bool find_trailer(const char *d, size_t len, size_t *k, const char **v, size_t *v_len)
{
    if (len < TRAILER_HEAD_LEN + 3 || d[len - 1] != '}' || d[len - 2] != '"')
        return false;
    size_t q = len - 2; /* the closing quote */
    size_t i = q;
    while (i > 0 && (name_char((unsigned char)d[i - 1]) || d[i - 1] == ':'))
        i--;
    if (i < TRAILER_HEAD_LEN ||
        memcmp(d + i - TRAILER_HEAD_LEN, TRAILER_HEAD, TRAILER_HEAD_LEN) != 0)
        return false;
    *k = i - TRAILER_HEAD_LEN;
    *v = d + i;
    *v_len = q - i;
    return true;
}

loom_err loom__trust_verify_bytes(loom__trust *t, const void *data, size_t len, loom__dir dir,
                                  const loom__key **signer, size_t *signed_len)
{
    const char *d = data, *v;
    size_t k, vl;
    *signer = NULL;
    if (!find_trailer(d, len, &k, &v, &vl))
        return LOOM_ENOTFOUND;
    /* "<kind>:<name>:<b64>" */
    const char *c1 = vl > 2 && v[1] == ':' ? v + 1 : NULL;
    const char *c2 = c1 ? memchr(c1 + 1, ':', (size_t)(v + vl - c1 - 1)) : NULL;
    if (!c2 || (v[0] != 'm' && v[0] != 's'))
        return LOOM_EPARSE;
    const loom__key *key = find_key(t, c1 + 1, (size_t)(c2 - c1 - 1));
    if (!key)
        return LOOM_EPARSE;
    size_t want = v[0] == 'm' ? MAC_LEN : crypto_sign_BYTES, got = 0;
    unsigned char tag[crypto_sign_BYTES];
    const char *b = c2 + 1;
    if (sodium_base642bin(tag, sizeof tag, b, (size_t)(v + vl - b), NULL, &got, NULL, B64) != 0 ||
        got != want)
        return LOOM_EPARSE;
    bool ok;
    const char *name = c1 + 1;
    size_t name_len = (size_t)(c2 - c1 - 1);
    if (v[0] == 'm') {
        unsigned char mac[MAC_LEN];
        make_tag(t, key, dir, d, k, name, name_len, t->name, mac);
        ok = sodium_memcmp(mac, tag, MAC_LEN) == 0;
    } else {
        unsigned char ctx[TAG_CTX_MAX];
        size_t cl = tag_context(ctx, dir, name, name_len, "");
        crypto_sign_state st;
        crypto_sign_init(&st);
        crypto_sign_update(&st, ctx, cl);
        crypto_sign_update(&st, (const unsigned char *)d, k);
        ok = crypto_sign_final_verify(&st, tag, key->pk) == 0;
    }
    if (!ok)
        return LOOM_EPARSE;
    *signer = key;
    *signed_len = k;
    return LOOM_OK;
}

uint64_t loom__trust_id_hash(const loom__trust *t, const char *id, uint64_t scope)
{
    unsigned char in[LOOM_ID_LEN + 8], out[crypto_shorthash_BYTES];
    memcpy(in, id, LOOM_ID_LEN);
    for (int i = 0; i < 8; i++)
        in[LOOM_ID_LEN + i] = (unsigned char)(scope >> (8 * i));
    crypto_shorthash(out, in, sizeof in, t->cache_key);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return h ? h : 1; /* 0 marks an empty slot */
}

static bool gen_has(const uint64_t *g, size_t slots, uint64_t h)
{
    for (size_t i = h & (slots - 1);; i = (i + 1) & (slots - 1)) {
        if (g[i] == h)
            return true;
        if (!g[i])
            return false;
    }
}

static void gen_put(uint64_t *g, size_t slots, uint64_t h)
{
    size_t i = h & (slots - 1);
    while (g[i])
        i = (i + 1) & (slots - 1);
    g[i] = h;
}

/* Doubles the current generation; false at CACHE_MAX_SLOTS or without
 * memory. Under t->mu. */
static bool gen_grow(loom__trust *t)
{
    size_t slots = t->gen_slots[0] * 2;
    uint64_t *g = slots <= CACHE_MAX_SLOTS ? calloc(slots, sizeof *g) : NULL;
    if (!g)
        return false;
    for (size_t i = 0; i < t->gen_slots[0]; i++)
        if (t->gen[0][i])
            gen_put(g, slots, t->gen[0][i]);
    free(t->gen[0]);
    t->gen[0] = g;
    t->gen_slots[0] = slots;
    return true;
}

/* True when id was seen within the window (and records it otherwise).
 * Two generations of one window each: an id stays at least one window, at
 * most two, and a message is accepted only within half a window of its
 * timestamp either way, so it is remembered for as long as it could be
 * accepted. A generation that fills up within its window grows; when it
 * cannot, new ids are refused (fail closed: a flood of messages must not
 * push ids out of the cache early) and that is logged by the caller. */
static bool seen_before(loom__trust *t, const char *id, uint64_t scope, bool *full)
{
    uint64_t h = loom__trust_id_hash(t, id, scope);
    *full = false;
    pthread_mutex_lock(&t->mu);
    int64_t now = loom__mono_ms();
    if (now - t->gen_start >= t->window_ms) {
        uint64_t *old = t->gen[1];
        size_t old_slots = t->gen_slots[1];
        t->gen[1] = t->gen[0];
        t->gen_count[1] = t->gen_count[0];
        t->gen_slots[1] = t->gen_slots[0];
        memset(old, 0, old_slots * sizeof *old);
        t->gen[0] = old;
        t->gen_slots[0] = old_slots;
        t->gen_count[0] = 0;
        t->gen_start = now;
    }
    bool seen = gen_has(t->gen[0], t->gen_slots[0], h) || gen_has(t->gen[1], t->gen_slots[1], h);
    if (!seen && t->gen_count[0] >= t->gen_slots[0] / 4 * 3 && !gen_grow(t))
        seen = *full = true;
    if (!seen) {
        gen_put(t->gen[0], t->gen_slots[0], h);
        t->gen_count[0]++;
    }
    pthread_mutex_unlock(&t->mu);
    return seen;
}

static loom_err refuse(loom__trust *t, int reason, char *why, size_t n, const char *text)
{
    loom__trust_count(t, reason);
    if (why && n)
        loom__strlcpy(why, text, n);
    return LOOM_ESTATE;
}

/* Is m of the type its direction carries? Events and announcements go to
 * all; a success response is also its event. */
static bool type_fits(const loom_msg *m, loom__dir dir)
{
    if (dir == LOOM__DIR_COMMAND)
        return m->type == LOOM_MSG_COMMAND;
    if (dir == LOOM__DIR_REPLY)
        return m->type == LOOM_MSG_SUCCESS || m->type == LOOM_MSG_ERROR;
    return m->type != LOOM_MSG_COMMAND;
}

loom_err loom__trust_decode(loom__trust *t, const void *data, size_t len, loom__dir dir,
                            uint64_t scope, loom_msg **out, char *why, size_t why_len)
{
    *out = NULL;
    if (!t->signing)
        return loom_msg_decode(data, len, out, why, why_len);
    while (len && ((const char *)data)[len - 1] == '\0')
        len--;
    const loom__key *key = NULL;
    size_t signed_len = 0;
    loom_err err = loom__trust_verify_bytes(t, data, len, dir, &key, &signed_len);
    loom_msg *m = NULL;
    loom_err derr = loom_msg_decode(data, len, &m, why, why_len);
    if (derr != LOOM_OK)
        return derr; /* not an envelope: a bare call, or garbage */
    if (err == LOOM_ENOTFOUND) {
        loom_msg_release(m);
        return refuse(t, LOOM__DROP_UNSIGNED, why, why_len, "unsigned envelope");
    }
    if (err != LOOM_OK) {
        loom_msg_release(m);
        return refuse(t, LOOM__DROP_BAD, why, why_len,
                      "unknown signer or bad signature (or one made for another direction or "
                      "recipient)");
    }
    if (!type_fits(m, dir)) {
        loom_msg_release(m);
        return refuse(t, LOOM__DROP_BAD, why, why_len,
                      dir == LOOM__DIR_REPLY ? "not a response on a reply topic"
                                             : "a message of the wrong type for its topic");
    }
    if (m->type != LOOM_MSG_INFO) {
        if (m->sender.service && !key_serves(key, m->sender.service)) {
            loom_msg_release(m);
            return refuse(t, LOOM__DROP_SENDER, why, why_len,
                          "signer may not speak for the sender service");
        }
        int64_t now = loom__now_ms(), half = t->window_ms / 2;
        bool full = false;
        if (m->timestamp < now - half || m->timestamp > now + half ||
            (m->deadline && m->deadline < now) || seen_before(t, m->id, scope, &full)) {
            loom_msg_release(m);
            return refuse(t, LOOM__DROP_REPLAY, why, why_len,
                          full ? "the replay cache is full (security.replay_window_ms too long "
                                 "for this message rate)"
                               : "replayed, expired or outside the time window");
        }
    }
    if (loom__msg_set(m, &m->signer, key->name) != LOOM_OK) {
        loom_msg_release(m);
        return LOOM_ENOMEM;
    }
    m->verified = true;
    atomic_fetch_add_explicit(&t->verified, 1, memory_order_relaxed);
    *out = m;
    return LOOM_OK;
}

/* --- key generation ------------------------------------------------------------------ */

loom_err loom__trust_keygen(const char *name, const char *key_path, char *line, size_t n)
{
    if (!name || !valid_name(name) || !key_path || n < 128)
        return LOOM_EINVAL;
    if (sodium_init() < 0)
        return LOOM_ENOMEM;
    unsigned char pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    char skb[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_ORIGINAL)];
    char pkb[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(skb, sizeof skb, sk, sizeof sk, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(pkb, sizeof pkb, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(sk, sizeof sk);
    loom_err err = LOOM_OK;
    int fd = open(key_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno == EEXIST ? LOOM_EEXIST : LOOM_EIO;
    } else {
        char *text = loom__asprintf("%s %s\n", name, skb);
        if (!text || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
            err = text ? LOOM_EIO : LOOM_ENOMEM;
        if (text)
            sodium_memzero(text, strlen(text));
        free(text);
        if (close(fd) != 0)
            err = LOOM_EIO;
    }
    sodium_memzero(skb, sizeof skb);
    snprintf(line, n, "%s %s", name, pkb);
    return err;
}
