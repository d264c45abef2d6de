/* The built-in "memory" state store: a striped hash table of key → JSON text.
 *
 * Layout: SHARDS independent chained hash tables ("shards"), each with its
 * own mutex; a key's hash picks its shard (low bits) and its bucket (the
 * bits above). Operations on one key take exactly one shard lock and never
 * another lock while holding it, so there is no lock ordering to get wrong.
 * Hashes are SipHash-1-3 with a per-store random key, so chosen keys cannot
 * pile into one bucket.
 *
 * Expiry is lazy: an expired entry is removed when an operation finds it,
 * and all expired entries of a shard are swept before the shard grows.
 * There is no timer thread.
 *
 * Named stores ("memory:NAME") live in a process-wide list with a reference
 * count per store, both guarded by names_lock; the last close frees the
 * store. Private stores ("memory:") are not in the list.
 */
#define _GNU_SOURCE
#include "store.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/util.h"

#define SHARDS 16          /* power of two */
#define INITIAL_BUCKETS 16 /* per shard; power of two */
#define MAX_NAME 256
#define CACHE_LINE 64

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expires; /* loom__mono_ms() after which it is gone; 0 = never */
    char *value;     /* JSON text, malloc'd */
    size_t klen;
    char key[]; /* NUL-terminated */
} entry;

/* One stripe. lock guards every other field and every entry reachable from
 * buckets. Aligned so two stripes never share a cache line. */
typedef struct shard {
    _Alignas(CACHE_LINE) pthread_mutex_t lock;
    entry **buckets;
    size_t nbuckets; /* power of two, >= INITIAL_BUCKETS */
    size_t count;
} shard;

typedef struct mem_db {
    shard shards[SHARDS];
    uint64_t seed[2]; /* immutable after creation */
    /* Named stores only, guarded by names_lock. */
    char *name; /* NULL = private */
    size_t refs;
    struct mem_db *next;
} mem_db;

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static mem_db *names; /* every named store with refs >= 1 */

/* --- hashing ------------------------------------------------------------ */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-1-3 (as in Rust's HashMap); byte order is irrelevant here. */
static uint64_t siphash13(const uint64_t k[2], const char *data, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m;
        memcpy(&m, data + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)(unsigned char)data[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The key of an operation, where it lives and when the operation runs. */
typedef struct keyref {
    const char *key;
    size_t len;
    uint64_t hash;
    shard *sh;
    int64_t now; /* loom__mono_ms() */
} keyref;

static size_t bucket_of(const shard *sh, uint64_t h)
{
    return (size_t)(h >> 4) & (sh->nbuckets - 1);
}

/* --- one shard (caller holds sh->lock) ---------------------------------- */

static bool expired(const entry *e, int64_t now)
{
    return e->expires && e->expires <= now;
}

static void unlink_locked(shard *sh, entry **link)
{
    entry *e = *link;
    *link = e->next;
    sh->count--;
    free(e->value);
    free(e);
}

/* The link to the live entry for k, or NULL. Removes the entry instead
 * when it has expired. */
static entry **find_locked(const keyref *k)
{
    shard *sh = k->sh;
    int64_t now = k->now;
    for (entry **link = &sh->buckets[bucket_of(sh, k->hash)]; *link; link = &(*link)->next) {
        entry *e = *link;
        if (e->hash != k->hash || e->klen != k->len || memcmp(e->key, k->key, k->len) != 0)
            continue;
        if (expired(e, now)) {
            unlink_locked(sh, link);
            return NULL;
        }
        return link;
    }
    return NULL;
}

static void sweep_locked(shard *sh, int64_t now)
{
    for (size_t i = 0; i < sh->nbuckets; i++) {
        entry **link = &sh->buckets[i];
        while (*link) {
            if (expired(*link, now))
                unlink_locked(sh, link);
            else
                link = &(*link)->next;
        }
    }
}

/* Called before an insert. Keeps the load factor <= 1: at the limit, sweeps
 * expired entries, then doubles unless the sweep freed half the table (so
 * that sweeps cost O(1) amortized per insert). When the bigger array cannot
 * be allocated the shard stays as it is: slower, still correct. */
static void make_room_locked(shard *sh, int64_t now)
{
    if (sh->count < sh->nbuckets)
        return;
    sweep_locked(sh, now);
    if (sh->count < sh->nbuckets / 2 || sh->nbuckets > SIZE_MAX / 2 / sizeof(entry *))
        return;
    size_t n = sh->nbuckets * 2;
    entry **nb = calloc(n, sizeof *nb);
    if (!nb)
        return;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        entry *e = sh->buckets[i];
        while (e) {
            entry *next = e->next;
            size_t b = (size_t)(e->hash >> 4) & (n - 1);
            e->next = nb[b];
            nb[b] = e;
            e = next;
        }
    }
    free(sh->buckets);
    sh->buckets = nb;
    sh->nbuckets = n;
}

/* Stores *value for k with expiry expires: into the live entry at link,
 * handing its old value back in *value, or (link NULL) into a new entry,
 * setting *value to NULL. The caller frees *value after unlocking.
 * LOOM_ENOMEM leaves the shard and *value as they were. */
static loom_err put_locked(const keyref *k, entry **link, char **value, int64_t expires)
{
    if (link) {
        char *old = (*link)->value;
        (*link)->value = *value;
        (*link)->expires = expires;
        *value = old;
        return LOOM_OK;
    }
    shard *sh = k->sh;
    make_room_locked(sh, k->now);
    entry *e = malloc(sizeof *e + k->len + 1);
    if (!e)
        return LOOM_ENOMEM;
    e->hash = k->hash;
    e->expires = expires;
    e->value = *value;
    e->klen = k->len;
    memcpy(e->key, k->key, k->len + 1);
    size_t b = bucket_of(sh, k->hash);
    e->next = sh->buckets[b];
    sh->buckets[b] = e;
    sh->count++;
    *value = NULL;
    return LOOM_OK;
}

/* --- operations --------------------------------------------------------- */

/* Starts an operation on key: fills k, takes the lock of its shard and
 * returns the link to its live entry, or NULL. The caller ends the
 * operation with pthread_mutex_unlock(&k->sh->lock), and allocates what it
 * can before starting. */
static entry **lock_key(mem_db *db, const char *key, keyref *k)
{
    k->key = key;
    k->len = strlen(key);
    k->hash = siphash13(db->seed, key, k->len);
    k->sh = &db->shards[k->hash & (SHARDS - 1)];
    k->now = loom__mono_ms();
    pthread_mutex_lock(&k->sh->lock);
    return find_locked(k);
}

static loom_err mem_get(void *self, const char *key, char **json)
{
    if (!self || !key || !json)
        return LOOM_EINVAL;
    keyref k;
    entry **link = lock_key(self, key, &k);
    loom_err err = LOOM_ENOTFOUND;
    if (link) {
        *json = strdup((*link)->value);
        err = *json ? LOOM_OK : LOOM_ENOMEM;
    }
    pthread_mutex_unlock(&k.sh->lock);
    return err;
}

/* set, add and cas: stores a copy of json (NULL: deletes the key) with
 * ttl_ms, unconditionally or (check) only when the current value matches
 * expected_json as cas compares; add is "only if absent". LOOM_EEXIST when
 * it does not match. */
static loom_err put(mem_db *db, const char *key, const char *json, uint32_t ttl_ms, bool check,
                    const char *expected_json)
{
    char *copy = NULL;
    if (json && !(copy = strdup(json)))
        return LOOM_ENOMEM;
    keyref k;
    entry **link = lock_key(db, key, &k);
    loom_err err = LOOM_OK;
    if (check && !loom__store_cas_match(link ? (*link)->value : NULL, expected_json))
        err = LOOM_EEXIST;
    else if (copy)
        err = put_locked(&k, link, &copy, ttl_ms ? k.now + ttl_ms : 0);
    else if (link)
        unlink_locked(k.sh, link);
    pthread_mutex_unlock(&k.sh->lock);
    free(copy);
    return err;
}

static loom_err mem_set(void *self, const char *key, const char *json, uint32_t ttl_ms,
                        bool if_absent)
{
    if (!self || !key || !json)
        return LOOM_EINVAL;
    return put(self, key, json, ttl_ms, if_absent, NULL);
}

static loom_err mem_del(void *self, const char *key)
{
    if (!self || !key)
        return LOOM_EINVAL;
    keyref k;
    entry **link = lock_key(self, key, &k);
    bool found = link != NULL;
    if (found)
        unlink_locked(k.sh, link);
    pthread_mutex_unlock(&k.sh->lock);
    return found ? LOOM_OK : LOOM_ENOTFOUND;
}

static loom_err mem_incr(void *self, const char *key, int64_t delta, int64_t *out)
{
    if (!self || !key)
        return LOOM_EINVAL;
    char *text = malloc(LOOM__STORE_INT_TEXT);
    if (!text)
        return LOOM_ENOMEM;
    int64_t next = 0;
    keyref k;
    entry **link = lock_key(self, key, &k);
    loom_err err = loom__store_incr_text(link ? (*link)->value : NULL, delta, &next, text);
    if (err == LOOM_OK) /* the expiry stays as it was */
        err = put_locked(&k, link, &text, link ? (*link)->expires : 0);
    pthread_mutex_unlock(&k.sh->lock);
    free(text);
    if (err == LOOM_OK && out)
        *out = next;
    return err;
}

static loom_err mem_cas(void *self, const char *key, const char *expected_json,
                        const char *new_json, uint32_t ttl_ms)
{
    if (!self || !key)
        return LOOM_EINVAL;
    return put(self, key, new_json, ttl_ms, true, expected_json);
}

/* Visits every shard, one lock at a time: not a snapshot, but each key
 * that exists throughout the call is seen once. */
static loom_err mem_list(void *self, const char *prefix, const char *after, size_t limit,
                         char ***keys, size_t *count)
{
    mem_db *db = self;
    if (!db || !prefix || !keys || !count || limit == 0)
        return LOOM_EINVAL;
    loom__store_page pg;
    loom__store_page_init(&pg, prefix, after, limit);
    int64_t now = loom__mono_ms();
    for (size_t s = 0; s < SHARDS; s++) {
        shard *sh = &db->shards[s];
        pthread_mutex_lock(&sh->lock);
        for (size_t b = 0; b < sh->nbuckets; b++)
            for (const entry *e = sh->buckets[b]; e; e = e->next)
                if (!expired(e, now))
                    loom__store_page_offer(&pg, e->key, e->klen);
        pthread_mutex_unlock(&sh->lock);
    }
    return loom__store_page_finish(&pg, keys, count);
}

/* --- lifetime ----------------------------------------------------------- */

static void db_free(mem_db *db)
{
    for (size_t s = 0; s < SHARDS; s++) {
        shard *sh = &db->shards[s];
        if (!sh->buckets)
            continue; /* creation failed before this shard */
        for (size_t i = 0; i < sh->nbuckets; i++) {
            entry *e = sh->buckets[i];
            while (e) {
                entry *next = e->next;
                free(e->value);
                free(e);
                e = next;
            }
        }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->lock);
    }
    free(db->name);
    free(db);
}

static mem_db *db_new(const char *name, size_t name_len)
{
    /* sizeof(mem_db) is a multiple of its alignment, as aligned_alloc
     * requires. */
    mem_db *db = aligned_alloc(_Alignof(mem_db), sizeof *db);
    if (!db)
        return NULL;
    memset(db, 0, sizeof *db);
    if (name) {
        db->name = strndup(name, name_len);
        if (!db->name) {
            free(db);
            return NULL;
        }
    }
    db->refs = 1;
    if (getrandom(db->seed, sizeof db->seed, GRND_NONBLOCK) != (ssize_t)sizeof db->seed) {
        /* Early boot: ids are weaker but the table still works. */
        char id[33];
        loom__random_id(id);
        memcpy(db->seed, id, sizeof db->seed);
        db->seed[1] ^= (uint64_t)(uintptr_t)db;
    }
    for (size_t s = 0; s < SHARDS; s++) {
        shard *sh = &db->shards[s];
        sh->buckets = calloc(INITIAL_BUCKETS, sizeof *sh->buckets);
        if (!sh->buckets)
            goto fail;
        if (pthread_mutex_init(&sh->lock, NULL) != 0) {
            free(sh->buckets);
            sh->buckets = NULL;
            goto fail;
        }
        sh->nbuckets = INITIAL_BUCKETS;
    }
    return db;
fail:
    db_free(db);
    return NULL;
}

static loom_err mem_open(void **self, const char *url, const cJSON *options)
{
    (void)options; /* nothing to configure yet */
    if (!self || !url)
        return LOOM_EINVAL;
    *self = NULL;
    const char *colon = strchr(url, ':');
    if (!colon)
        return LOOM_EINVAL;
    const char *name = colon + 1;
    if (name[0] == '/' && name[1] == '/')
        name += 2;
    size_t len = strnlen(name, MAX_NAME + 1);
    if (len > MAX_NAME)
        return LOOM_ECONFIG;

    if (len == 0) {
        mem_db *db = db_new(NULL, 0);
        if (!db)
            return LOOM_ENOMEM;
        *self = db;
        return LOOM_OK;
    }

    loom_err err = LOOM_OK;
    pthread_mutex_lock(&names_lock);
    mem_db *db = names;
    while (db && strcmp(db->name, name) != 0)
        db = db->next;
    if (db) {
        db->refs++;
    } else {
        db = db_new(name, len);
        if (db) {
            db->next = names;
            names = db;
        } else {
            err = LOOM_ENOMEM;
        }
    }
    pthread_mutex_unlock(&names_lock);
    if (err == LOOM_OK)
        *self = db;
    return err;
}

static void mem_close(void *self)
{
    mem_db *db = self;
    if (!db)
        return;
    if (db->name) {
        pthread_mutex_lock(&names_lock);
        bool last = --db->refs == 0;
        if (last) {
            mem_db **link = &names;
            while (*link != db)
                link = &(*link)->next;
            *link = db->next;
        }
        pthread_mutex_unlock(&names_lock);
        if (!last)
            return;
    }
    db_free(db);
}

const loom_store_ops loom__store_memory_ops = {
    .abi_version = LOOM_STORE_ABI_VERSION,
    .scheme = "memory",
    .open = mem_open,
    .get = mem_get,
    .set = mem_set,
    .del = mem_del,
    .incr = mem_incr,
    .close = mem_close,
    .cas = mem_cas,
    .list = mem_list,
};
