/* The built-in "file" state store: one JSON file, shared by processes.
 *
 * File format: one JSON object, one entry per line, keys sorted:
 *   {
 *   "key":{"v":<value>,"exp":<epoch ms>},
 *   ...
 *   }
 * "exp" is present only for entries with a TTL. Values are kept as the exact
 * JSON text they were stored with (never re-printed through a double), so an
 * incr counter stays exact across reloads. Expired entries are invisible and
 * left out of the next save.
 *
 * Locking: db->lock (a mutex) serializes this store's users in this process.
 * Across processes, and between two stores opened on one PATH in one
 * process, every operation holds flock() on PATH.lock: shared for get,
 * exclusive for writes. Order: db->lock, then the flock; nothing else is
 * taken while holding them. The lock file is never removed.
 *
 * Under the locks the cache is checked against stat(PATH) and reloaded when
 * the file changed. A write applies the change to the cache, saves it to
 * PATH.tmp.<pid>, fsyncs and renames it over PATH, so anyone reading PATH
 * sees either the old or the new complete file. When a save fails the cache
 * is dropped (the next operation reloads), so the cache never holds a change
 * that is not in the file.
 *
 * Trust. The files live in a directory others cannot write (owned by this
 * user or root, no group or other write bit; checked before the lock file
 * is first opened, and at open when the directory exists), so nobody can
 * plant PATH, PATH.lock or a temporary name; PATH and PATH.lock must also
 * be owned by this user (or root) and not writable by others, or every
 * operation fails (LOOM_EIO) instead of trusting them. Temporary files are
 * created with mkostemp (O_EXCL, a random name). Waiting for the flock is
 * bounded by timeout_ms (the `state:` option, default DEFAULT_TIMEOUT_MS):
 * a lock held too long gives LOOM_ETIMEDOUT, never a hung worker.
 *
 * Change detection compares (st_dev, st_ino, st_size, st_mtim) with the file
 * the cache came from. pin_fd keeps that file open, so its inode cannot be
 * freed and reused by a newer file: without it a file written twice by
 * another process within one timestamp tick could look unchanged.
 */
#define _GNU_SOURCE
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

#define MAX_FILE ((size_t)64 << 20)      /* bytes; a larger file is LOOM_ETOOBIG */
#define MAX_DEPTH CJSON_NESTING_LIMIT    /* nesting of one value, as cJSON allows */
#define MAX_NUMBER 63                    /* longest number text cJSON parses */
#define WBUF ((size_t)64 << 10)          /* write buffer of a save */
#define TMP_SUFFIX (sizeof ".tmp." + 20) /* ".tmp.XXXXXX" and a NUL, bounded */
#define DEFAULT_TIMEOUT_MS 5000          /* longest wait for the flock */

typedef struct fentry {
    char *value; /* JSON text, exactly as stored, NUL-terminated */
    int64_t exp; /* epoch ms from which it is gone; 0 = never */
    char key[];  /* NUL-terminated, no NUL inside */
} fentry;

typedef enum cache_state {
    CACHE_NONE,    /* nothing known: the next operation loads */
    CACHE_ABSENT,  /* PATH did not exist: the store is empty */
    CACHE_LOADED,  /* items mirror the file held by pin_fd */
    CACHE_CORRUPT, /* the file held by pin_fd is not a store: LOOM_EPARSE */
    CACHE_TOOBIG,  /* the file held by pin_fd exceeds MAX_FILE: LOOM_ETOOBIG */
} cache_state;

typedef struct table {
    fentry **items; /* sorted by strcmp of keys; keys unique */
    size_t len, cap;
} table;

typedef struct file_db {
    /* Immutable after open. */
    char *path;      /* absolute */
    char *lock_path; /* path + ".lock" */
    char *dir;       /* the directory of path, fsync'd after a rename */
    uint32_t timeout_ms; /* longest wait for the flock */

    pthread_mutex_t lock; /* guards every field below */
    int lock_fd;          /* PATH.lock, -1 until opened; opened by lock_pid */
    pid_t lock_pid;       /* a child after fork() must open its own */
    bool locked;          /* the flock is held (between enter and leave) */
    cache_state state;
    int pin_fd;      /* the file the cache came from (LOADED/CORRUPT/TOOBIG), else -1 */
    struct stat pin; /* its identity when loaded or written */
    table data;      /* CACHE_LOADED; empty otherwise, except during an operation */
} file_db;

/* --- entries ------------------------------------------------------------- */

static void entry_free(fentry *e)
{
    free(e->value);
    free(e);
}

static void table_free(table *t)
{
    for (size_t i = 0; i < t->len; i++)
        entry_free(t->items[i]);
    free(t->items);
    *t = (table){0};
}

static bool table_reserve(table *t, size_t extra)
{
    if (t->cap - t->len >= extra)
        return true;
    size_t cap = t->cap ? t->cap : 16;
    while (cap - t->len < extra) {
        if (cap > SIZE_MAX / 2 / sizeof *t->items)
            return false;
        cap *= 2;
    }
    fentry **items = realloc(t->items, cap * sizeof *items);
    if (!items)
        return false;
    t->items = items;
    t->cap = cap;
    return true;
}

/* The index of key, or where it would be inserted; *found says which. */
static size_t table_search(const table *t, const char *key, bool *found)
{
    size_t lo = 0, hi = t->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(t->items[mid]->key, key);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static bool expired(const fentry *e, int64_t now)
{
    return e->exp && e->exp <= now;
}

static void table_purge(table *t, int64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < t->len; i++) {
        if (expired(t->items[i], now))
            entry_free(t->items[i]);
        else
            t->items[n++] = t->items[i];
    }
    t->len = n;
}

/* Removes items[i] and frees it. */
static void table_remove(table *t, size_t i)
{
    entry_free(t->items[i]);
    memmove(&t->items[i], &t->items[i + 1], (t->len - i - 1) * sizeof *t->items);
    t->len--;
}

static fentry *entry_new(const char *key)
{
    size_t klen = strlen(key);
    fentry *e = malloc(sizeof *e + klen + 1);
    if (!e)
        return NULL;
    e->value = NULL;
    e->exp = 0;
    memcpy(e->key, key, klen + 1);
    return e;
}

/* --- JSON scanning -------------------------------------------------------
 * A strict RFC 8259 scanner over a length-bounded buffer, no recursion. It
 * accepts nothing cJSON would refuse (nesting, surrogate escapes, number
 * length), so a value it lets into the file parses again in loom_store_get. */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static long hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = loom__hex_digit(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t utf8_encode(long cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Scans the string token at p. Returns the end past its closing quote, or
 * NULL when it is malformed. When out is given the decoded bytes go there
 * (NULL as well when they exceed cap); *outlen (optional) gets their count,
 * which is never more than the token's length. */
static const char *scan_string(const char *p, const char *end, char *out, size_t cap,
                               size_t *outlen)
{
    if (p == end || *p != '"')
        return NULL;
    p++;
    size_t n = 0;
    while (p < end) {
        unsigned char c = (unsigned char)*p++;
        char buf[4];
        size_t blen = 1;
        if (c == '"') {
            if (outlen)
                *outlen = n;
            return p;
        }
        if (c < 0x20)
            return NULL;
        buf[0] = (char)c;
        if (c == '\\') {
            if (p == end)
                return NULL;
            static const char from[8] = "\"\\/bfnrt", to[8] = "\"\\/\b\f\n\r\t";
            char esc = *p++;
            if (esc != 'u') {
                const char *hit = memchr(from, esc, sizeof from);
                if (!hit)
                    return NULL;
                buf[0] = to[hit - from];
            } else {
                long cp = hex4(p, end);
                if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff))
                    return NULL;
                p += 4;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    /* A high surrogate must be followed by a low one. */
                    long lo = end - p >= 2 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2, end) : -1;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return NULL;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                blen = utf8_encode(cp, buf);
            }
        }
        if (out) {
            if (blen > cap - n)
                return NULL;
            memcpy(out + n, buf, blen);
        }
        n += blen;
    }
    return NULL;
}

static const char *skip_digits(const char *p, const char *end)
{
    while (p < end && is_digit(*p))
        p++;
    return p;
}

static const char *skip_number(const char *p, const char *end)
{
    const char *start = p;
    if (p < end && *p == '-')
        p++;
    if (p == end || !is_digit(*p))
        return NULL;
    p = *p == '0' ? p + 1 : skip_digits(p, end);
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit(*p))
            return NULL;
        p = skip_digits(p, end);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p == end || !is_digit(*p))
            return NULL;
        p = skip_digits(p, end);
    }
    return p - start <= MAX_NUMBER ? p : NULL;
}

static const char *skip_literal(const char *p, const char *end, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* p at a member name: returns the position after its ':'. */
static const char *skip_name(const char *p, const char *end)
{
    p = scan_string(p, end, NULL, 0, NULL);
    if (!p)
        return NULL;
    p = skip_ws(p, end);
    return p < end && *p == ':' ? p + 1 : NULL;
}

/* Skips one JSON value (and whitespace before it). Returns its end, or NULL
 * when it is malformed or nests deeper than MAX_DEPTH. */
static const char *skip_value(const char *p, const char *end)
{
    uint64_t is_obj[(MAX_DEPTH + 63) / 64]; /* bit d: container d is an object */
    size_t depth = 0;
    for (;;) {
        /* p is where a value starts. */
        p = skip_ws(p, end);
        if (p == end)
            return NULL;
        switch (*p) {
        case '{':
        case '[': {
            bool obj = *p == '{';
            if (depth == MAX_DEPTH)
                return NULL;
            if (obj)
                is_obj[depth / 64] |= (uint64_t)1 << (depth % 64);
            else
                is_obj[depth / 64] &= ~((uint64_t)1 << (depth % 64));
            depth++;
            p = skip_ws(p + 1, end);
            if (p < end && *p == (obj ? '}' : ']')) {
                p++;
                depth--;
                break; /* an empty container is a complete value */
            }
            if (obj && !(p = skip_name(p, end)))
                return NULL;
            continue;
        }
        case '"':
            p = scan_string(p, end, NULL, 0, NULL);
            break;
        case 't':
            p = skip_literal(p, end, "true");
            break;
        case 'f':
            p = skip_literal(p, end, "false");
            break;
        case 'n':
            p = skip_literal(p, end, "null");
            break;
        default:
            p = skip_number(p, end);
            break;
        }
        if (!p)
            return NULL;
        /* A value ended: close containers until one continues. */
        for (;;) {
            if (depth == 0)
                return p;
            bool obj = is_obj[(depth - 1) / 64] >> ((depth - 1) % 64) & 1;
            p = skip_ws(p, end);
            if (p == end)
                return NULL;
            if (*p == (obj ? '}' : ']')) {
                p++;
                depth--;
                continue;
            }
            if (*p != ',')
                return NULL;
            p++;
            if (obj && !(p = skip_name(skip_ws(p, end), end)))
                return NULL;
            break;
        }
    }
}

/* True when text[0..len) is exactly one JSON value (whitespace around). */
static bool valid_json(const char *text, size_t len)
{
    const char *end = text + len;
    const char *p = skip_value(text, end);
    return p && skip_ws(p, end) == end;
}

/* --- loading ------------------------------------------------------------- */

/* Parses the member value of one entry, {"v": ..., "exp": ...}, into e.
 * LOOM_EPARSE for anything else (a missing "v", an unknown or repeated
 * member, an "exp" that is not a positive integer). */
static loom_err parse_entry(const char **pp, const char *end, fentry *e)
{
    const char *p = *pp;
    bool have_v = false, have_exp = false;
    if (p == end || *p != '{')
        return LOOM_EPARSE;
    p = skip_ws(p + 1, end);
    for (;;) {
        char name[3];
        size_t nlen = 0;
        p = scan_string(p, end, name, sizeof name, &nlen);
        if (!p)
            return LOOM_EPARSE; /* malformed, or longer than any known name */
        p = skip_ws(p, end);
        if (p == end || *p != ':')
            return LOOM_EPARSE;
        const char *vstart = skip_ws(p + 1, end);
        const char *vend = skip_value(vstart, end);
        if (!vend)
            return LOOM_EPARSE;
        size_t vlen = (size_t)(vend - vstart);
        if (nlen == 1 && name[0] == 'v' && !have_v) {
            e->value = strndup(vstart, vlen);
            if (!e->value)
                return LOOM_ENOMEM;
            have_v = true;
        } else if (nlen == 3 && memcmp(name, "exp", 3) == 0 && !have_exp) {
            char num[32];
            int64_t exp = 0;
            if (vlen >= sizeof num || (*vstart != '-' && !is_digit(*vstart)))
                return LOOM_EPARSE;
            memcpy(num, vstart, vlen);
            num[vlen] = '\0';
            if (!loom__store_parse_integer(num, &exp) || exp <= 0)
                return LOOM_EPARSE;
            e->exp = exp;
            have_exp = true;
        } else {
            return LOOM_EPARSE;
        }
        p = skip_ws(vend, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            break;
        return LOOM_EPARSE;
    }
    if (!have_v)
        return LOOM_EPARSE;
    *pp = p + 1;
    return LOOM_OK;
}

static int cmp_entries(const void *a, const void *b)
{
    return strcmp((*(fentry *const *)a)->key, (*(fentry *const *)b)->key);
}

/* Parses a whole store file. An empty file is an empty store. On error *out
 * is left empty. Errors: LOOM_EPARSE (not a store file, including duplicate
 * keys and keys with a NUL), LOOM_ENOMEM. */
static loom_err parse_file(const char *buf, size_t len, table *out)
{
    table t = {0};
    loom_err err = LOOM_EPARSE;
    const char *p = buf, *end = buf + len;
    *out = t;
    if (len == 0)
        return LOOM_OK;
    p = skip_ws(p, end);
    if (p == end || *p != '{')
        goto fail;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            size_t klen = 0;
            const char *q = scan_string(p, end, NULL, 0, &klen);
            if (!q)
                goto fail;
            if (!table_reserve(&t, 1))
                goto nomem;
            fentry *e = malloc(sizeof *e + klen + 1);
            if (!e)
                goto nomem;
            scan_string(p, end, e->key, klen, NULL);
            e->key[klen] = '\0';
            e->value = NULL;
            e->exp = 0;
            t.items[t.len++] = e; /* freed with t from here on */
            if (memchr(e->key, '\0', klen))
                goto fail;
            p = skip_ws(q, end);
            if (p == end || *p != ':')
                goto fail;
            p = skip_ws(p + 1, end);
            err = parse_entry(&p, end, e);
            if (err != LOOM_OK)
                goto fail;
            err = LOOM_EPARSE;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            goto fail;
        }
    }
    if (skip_ws(p, end) != end)
        goto fail;
    if (t.len > 1)
        qsort(t.items, t.len, sizeof *t.items, cmp_entries);
    for (size_t i = 1; i < t.len; i++)
        if (strcmp(t.items[i - 1]->key, t.items[i]->key) == 0)
            goto fail;
    *out = t;
    return LOOM_OK;
nomem:
    err = LOOM_ENOMEM;
fail:
    table_free(&t);
    return err;
}

/* --- the file ------------------------------------------------------------ */

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Caller holds db->lock. */
static void cache_drop(file_db *db)
{
    table_free(&db->data);
    if (db->pin_fd >= 0)
        close(db->pin_fd);
    db->pin_fd = -1;
    db->state = CACHE_NONE;
}

static loom_err state_err(cache_state s)
{
    switch (s) {
    case CACHE_CORRUPT:
        return LOOM_EPARSE;
    case CACHE_TOOBIG:
        return LOOM_ETOOBIG;
    case CACHE_NONE:
        return LOOM_EIO; /* not reached: refresh never leaves it */
    default:
        return LOOM_OK;
    }
}

/* Owned by this user or root, and not writable by group or others. */
static bool trusted(const struct stat *st)
{
    return (st->st_uid == geteuid() || st->st_uid == 0) && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* The directory of the store, when it exists: a directory we can trust
 * (nobody else can create names in it). ENOENT is the caller's to judge. */
static loom_err check_dir(const file_db *db)
{
    struct stat st;
    if (stat(db->dir, &st) != 0)
        return errno == ENOENT || errno == ENOTDIR ? LOOM_ENOTFOUND : LOOM_EIO;
    return S_ISDIR(st.st_mode) && trusted(&st) ? LOOM_OK : LOOM_EIO;
}

/* Reads PATH into the cache. Caller holds db->lock and, when it can, the
 * flock. The identity recorded is that of the file actually read. */
static loom_err load_locked(file_db *db)
{
    cache_drop(db);
    /* O_NONBLOCK: a FIFO planted at PATH must not hang us (refused below). */
    int fd = open(db->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            db->state = CACHE_ABSENT;
            return LOOM_OK;
        }
        return LOOM_EIO;
    }
    struct stat st;
    /* A file someone else owns or may write is not this store's. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !trusted(&st)) {
        close(fd);
        return LOOM_EIO;
    }
    loom_err err = LOOM_ETOOBIG;
    if (st.st_size >= 0 && (uint64_t)st.st_size <= MAX_FILE) {
        size_t size = (size_t)st.st_size, got = 0;
        char *buf = malloc(size + 1);
        if (!buf) {
            close(fd);
            return LOOM_ENOMEM;
        }
        /* A file that shrinks while read (only an in-place writer could do
         * that) is parsed as read; its new size differs from st_size, so
         * the next operation reloads it. */
        while (got < size) {
            ssize_t n = read(fd, buf + got, size - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                free(buf);
                close(fd);
                return LOOM_EIO;
            }
            if (n == 0)
                break;
            got += (size_t)n;
        }
        err = parse_file(buf, got, &db->data);
        free(buf);
        if (err == LOOM_ENOMEM) {
            close(fd);
            return err;
        }
    }
    db->state = err == LOOM_OK ? CACHE_LOADED : err == LOOM_EPARSE ? CACHE_CORRUPT : CACHE_TOOBIG;
    db->pin_fd = fd;
    db->pin = st;
    return err;
}

/* Brings the cache up to date with PATH. Caller holds db->lock and, when it
 * can, the flock. Returns LOOM_OK, or the error every operation gets while
 * the file stays as it is (LOOM_EPARSE, LOOM_ETOOBIG), or LOOM_EIO. */
static loom_err refresh_locked(file_db *db)
{
    struct stat st;
    if (stat(db->path, &st) != 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            return LOOM_EIO;
        cache_drop(db);
        db->state = CACHE_ABSENT;
        return LOOM_OK;
    }
    if (db->state >= CACHE_LOADED && same_file(&st, &db->pin)) {
        db->pin = st; /* the same file; its mode may have changed since */
        return trusted(&st) ? state_err(db->state) : LOOM_EIO;
    }
    return load_locked(db);
}

/* A bounded wait for a contended flock. flock has no timed form, and
 * polling it starves the waiter (a busy holder takes it again at once), so
 * the wait is a blocking flock in the kernel's queue, on a thread of its
 * own and a descriptor of its own: the caller waits for it until the
 * deadline and, when it comes in time, adopts the descriptor as its lock
 * fd. A waiter left behind at the deadline releases the lock as soon as it
 * gets it and frees itself. */
typedef struct lock_waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fd, op, rc, refs;
    bool done, abandoned;
} lock_waiter;

static void waiter_unref_locked(lock_waiter *w)
{
    bool last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        if (w->fd >= 0)
            close(w->fd);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
    }
}

static void *waiter_main(void *arg)
{
    lock_waiter *w = arg;
    int r;
    while ((r = flock(w->fd, w->op)) != 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    w->rc = r;
    if (w->abandoned && r == 0)
        flock(w->fd, LOCK_UN);
    pthread_cond_signal(&w->cv);
    waiter_unref_locked(w);
    return NULL;
}

/* flock(op) within db->timeout_ms: LOOM_ETIMEDOUT when another holder
 * keeps it longer. Caller holds db->lock; db->lock_fd is open. */
static loom_err wait_flock(file_db *db, int op)
{
    if (flock(db->lock_fd, op | LOCK_NB) == 0) {
        db->locked = true;
        return LOOM_OK;
    }
    if (errno != EWOULDBLOCK && errno != EINTR)
        return LOOM_EIO;
    lock_waiter *w = calloc(1, sizeof *w);
    if (!w)
        return LOOM_ENOMEM;
    w->fd = open(db->lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    w->op = op;
    w->refs = 2;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    bool started = w->fd >= 0 && pthread_create(&t, &attr, waiter_main, w) == 0;
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&w->mu);
    if (!started) {
        w->refs = 1;
        waiter_unref_locked(w);
        return LOOM_EIO;
    }
    struct timespec due = loom__mono_after(db->timeout_ms);
    while (!w->done && pthread_cond_timedwait(&w->cv, &w->mu, &due) == 0)
        ;
    loom_err err = LOOM_ETIMEDOUT;
    if (!w->done) {
        w->abandoned = true;
    } else if (w->rc != 0) {
        err = LOOM_EIO;
    } else {
        close(db->lock_fd); /* same file: the lock now lives on w->fd */
        db->lock_fd = w->fd;
        w->fd = -1;
        db->locked = true;
        err = LOOM_OK;
    }
    waiter_unref_locked(w);
    return err;
}

/* Takes the flock: exclusive for writes. Caller holds db->lock. A reader
 * that cannot open or create the lock file (read-only or missing directory)
 * goes on without it: saves are atomic renames, so it still reads one
 * complete version of the file. */
static loom_err flock_locked(file_db *db, bool write)
{
    pid_t pid = getpid();
    if (db->lock_fd >= 0 && db->lock_pid != pid) {
        /* Inherited through fork(): the open file description, and any lock
         * on it, is shared with the parent. Closing our copy leaves the
         * parent's lock alone; we take our own. */
        close(db->lock_fd);
        db->lock_fd = -1;
    }
    if (db->lock_fd < 0) {
        loom_err derr = check_dir(db);
        if (derr == LOOM_EIO)
            return LOOM_EIO;
        int fd = open(db->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && !write && (errno == EACCES || errno == EROFS))
            fd = open(db->lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            if (!write &&
                (errno == ENOENT || errno == ENOTDIR || errno == EACCES || errno == EROFS))
                return LOOM_OK;
            return LOOM_EIO;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !trusted(&st)) {
            close(fd); /* a lock file someone else can hold */
            return LOOM_EIO;
        }
        db->lock_fd = fd;
        db->lock_pid = pid;
    }
    return wait_flock(db, write ? LOCK_EX : LOCK_SH);
}

static void leave(file_db *db)
{
    if (db->locked) {
        flock(db->lock_fd, LOCK_UN);
        db->locked = false;
    }
    pthread_mutex_unlock(&db->lock);
}

/* Starts an operation: takes db->lock and the flock and refreshes the
 * cache. On LOOM_OK the caller works on db->data and calls leave(); on an
 * error nothing is held. */
static loom_err enter(file_db *db, bool write)
{
    pthread_mutex_lock(&db->lock);
    loom_err err = flock_locked(db, write);
    if (err == LOOM_OK)
        err = refresh_locked(db);
    if (err != LOOM_OK)
        leave(db);
    return err;
}

/* --- saving -------------------------------------------------------------- */

typedef struct writer {
    int fd;
    char *buf; /* WBUF bytes */
    size_t len;
    size_t total; /* bytes of the file so far, <= MAX_FILE */
    loom_err err; /* the first error; later writes are ignored */
} writer;

static void w_raw(writer *w, const char *s, size_t n)
{
    while (n && w->err == LOOM_OK) {
        ssize_t k = write(w->fd, s, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            w->err = LOOM_EIO;
            return;
        }
        s += k;
        n -= (size_t)k;
    }
}

static void w_flush(writer *w)
{
    w_raw(w, w->buf, w->len);
    w->len = 0;
}

static void w_put(writer *w, const char *s, size_t n)
{
    if (w->err != LOOM_OK)
        return;
    if (n > MAX_FILE - w->total) {
        w->err = LOOM_ETOOBIG;
        return;
    }
    w->total += n;
    if (n > WBUF - w->len) {
        w_flush(w);
        if (n >= WBUF) {
            w_raw(w, s, n);
            return;
        }
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void w_str(writer *w, const char *s)
{
    w_put(w, s, strlen(s));
}

/* Writes key as a JSON string. Bytes other than '"', '\\' and controls are
 * copied as they are, so any key (UTF-8 or not) reads back identical. */
static void w_key(writer *w, const char *key)
{
    /* The short escapes used; other controls are written as \u00XX. */
    static const char *const named[] = {
        ['"'] = "\\\"", ['\\'] = "\\\\", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t",
    };
    w_put(w, "\"", 1);
    const char *run = key;
    for (const char *p = key;; p++) {
        unsigned char c = (unsigned char)*p;
        if (c != '\0' && c != '"' && c != '\\' && c >= 0x20)
            continue;
        w_put(w, run, (size_t)(p - run));
        if (c == '\0')
            break;
        if (c < LOOM__ARRAY_LEN(named) && named[c]) {
            w_str(w, named[c]);
        } else {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            w_str(w, esc);
        }
        run = p + 1;
    }
    w_put(w, "\"", 1);
}

static void w_entries(writer *w, const table *t)
{
    w_str(w, t->len ? "{\n" : "{");
    for (size_t i = 0; i < t->len; i++) {
        const fentry *e = t->items[i];
        w_key(w, e->key);
        w_str(w, ":{\"v\":");
        w_str(w, e->value);
        if (e->exp) {
            char num[48];
            snprintf(num, sizeof num, ",\"exp\":%" PRId64, e->exp);
            w_str(w, num);
        }
        w_str(w, i + 1 < t->len ? "},\n" : "}\n");
    }
    w_str(w, "}\n");
    if (w->err == LOOM_OK)
        w_flush(w);
}

/* Best effort: makes the rename durable. Some filesystems refuse fsync on a
 * directory; the data itself is already synced. */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Writes the cache to PATH atomically (tmp file, fsync, rename) and makes
 * the new file the cache's identity. On failure the cache is dropped and
 * PATH is untouched. Caller holds db->lock and the exclusive flock.
 * Errors: LOOM_EIO, LOOM_ETOOBIG, LOOM_ENOMEM. */
static loom_err save_locked(file_db *db)
{
    table_purge(&db->data, loom__now_ms());
    writer w = {.fd = -1, .err = LOOM_OK};
    char *tmp = loom__asprintf("%s.tmp.XXXXXX", db->path);
    w.buf = malloc(WBUF);
    if (!tmp || !w.buf) {
        w.err = LOOM_ENOMEM;
        goto out;
    }
    /* A fresh name, created exclusively (mode 0600): never a file someone
     * planted at a name they could predict. */
    w.fd = mkostemp(tmp, O_CLOEXEC);
    if (w.fd < 0) {
        w.err = LOOM_EIO;
        goto out;
    }
    if (db->state == CACHE_LOADED && fchmod(w.fd, db->pin.st_mode & 07777) != 0) {
        /* Keeps 0600: stricter than before, still ours to use. */
    }
    w_entries(&w, &db->data);
    if (w.err == LOOM_OK && fsync(w.fd) != 0)
        w.err = LOOM_EIO;
    if (w.err == LOOM_OK && rename(tmp, db->path) != 0)
        w.err = LOOM_EIO;
    if (w.err != LOOM_OK) {
        unlink(tmp);
        goto out;
    }
    sync_dir(db->dir);
    struct stat st;
    if (fstat(w.fd, &st) != 0) {
        /* Saved, but without an identity: the next operation reloads. */
        cache_drop(db);
    } else {
        if (db->pin_fd >= 0)
            close(db->pin_fd);
        db->pin_fd = w.fd;
        db->pin = st;
        db->state = CACHE_LOADED;
        w.fd = -1;
    }
out:
    if (w.fd >= 0)
        close(w.fd);
    if (w.err != LOOM_OK)
        cache_drop(db);
    free(w.buf);
    free(tmp);
    return w.err;
}

/* --- operations ---------------------------------------------------------- */

/* Copies json for the cache, outside the locks, once it is known to be
 * exactly one JSON value that fits in a file: anything else would corrupt
 * the file. Errors: LOOM_ETOOBIG, LOOM_EINVAL, LOOM_ENOMEM. */
static loom_err copy_value(const char *json, char **out)
{
    *out = NULL;
    size_t len = strlen(json);
    if (len > MAX_FILE)
        return LOOM_ETOOBIG;
    if (!valid_json(json, len))
        return LOOM_EINVAL;
    *out = strdup(json);
    return *out ? LOOM_OK : LOOM_ENOMEM;
}

/* Stores value (and exp) for key at index i of the cache, replacing
 * items[i] when found. Takes over *value, and *fresh when it inserts (each
 * set to what the caller must free: the old value, NULL). Caller holds
 * db->lock. LOOM_ENOMEM leaves the cache as it was. */
static loom_err put_locked(file_db *db, size_t i, bool found, fentry **fresh, char **value,
                           int64_t exp)
{
    table *t = &db->data;
    if (found) {
        char *old = t->items[i]->value;
        t->items[i]->value = *value;
        t->items[i]->exp = exp;
        *value = old;
        return LOOM_OK;
    }
    if (!table_reserve(t, 1))
        return LOOM_ENOMEM;
    memmove(&t->items[i + 1], &t->items[i], (t->len - i) * sizeof *t->items);
    t->items[i] = *fresh;
    t->items[i]->value = *value;
    t->items[i]->exp = exp;
    t->len++;
    *fresh = NULL;
    *value = NULL;
    return LOOM_OK;
}

/* The live entry for key, or NULL when it is absent or expired at now.
 * *i and *found say where key is or would go, as table_search does.
 * Caller holds db->lock. */
static fentry *find_live(file_db *db, const char *key, int64_t now, size_t *i, bool *found)
{
    *i = table_search(&db->data, key, found);
    fentry *e = *found ? db->data.items[*i] : NULL;
    return e && !expired(e, now) ? e : NULL;
}

static loom_err file_get(void *self, const char *key, char **json)
{
    file_db *db = self;
    if (!db || !key || !json)
        return LOOM_EINVAL;
    loom_err err = enter(db, false);
    if (err != LOOM_OK)
        return err;
    size_t i;
    bool found;
    fentry *e = find_live(db, key, loom__now_ms(), &i, &found);
    if (!e) {
        err = LOOM_ENOTFOUND;
    } else {
        *json = strdup(e->value);
        err = *json ? LOOM_OK : LOOM_ENOMEM;
    }
    leave(db);
    return err;
}

/* set, add and cas: stores json (NULL: deletes the key) with ttl_ms,
 * unconditionally or (check) only when the current value matches
 * expected_json as cas compares; add is "only if absent". LOOM_EEXIST when
 * it does not match. */
static loom_err file_put(file_db *db, const char *key, const char *json, uint32_t ttl_ms,
                         bool check, const char *expected_json)
{
    char *value = NULL;
    loom_err err = json ? copy_value(json, &value) : LOOM_OK;
    if (err != LOOM_OK)
        return err;
    fentry *fresh = entry_new(key); /* allocated outside the locks */
    err = fresh ? enter(db, true) : LOOM_ENOMEM;
    if (err == LOOM_OK) {
        int64_t now = loom__now_ms();
        size_t i;
        bool found;
        fentry *cur = find_live(db, key, now, &i, &found);
        if (check && !loom__store_cas_match(cur ? cur->value : NULL, expected_json)) {
            err = LOOM_EEXIST;
        } else if (value) {
            err = put_locked(db, i, found, &fresh, &value, ttl_ms ? now + ttl_ms : 0);
            if (err == LOOM_OK)
                err = save_locked(db);
        } else if (found) {
            /* Deleting a live entry, or purging an expired one: either way
             * the key is absent afterwards. */
            table_remove(&db->data, i);
            err = save_locked(db);
        }
        leave(db);
    }
    free(value);
    free(fresh);
    return err;
}

static loom_err file_set(void *self, const char *key, const char *json, uint32_t ttl_ms,
                         bool if_absent)
{
    if (!self || !key || !json)
        return LOOM_EINVAL;
    return file_put(self, key, json, ttl_ms, if_absent, NULL);
}

static loom_err file_del(void *self, const char *key)
{
    file_db *db = self;
    if (!db || !key)
        return LOOM_EINVAL;
    loom_err err = enter(db, true);
    if (err != LOOM_OK)
        return err;
    size_t i;
    bool found;
    if (!find_live(db, key, loom__now_ms(), &i, &found)) {
        err = LOOM_ENOTFOUND;
    } else {
        table_remove(&db->data, i);
        err = save_locked(db);
    }
    leave(db);
    return err;
}

static loom_err file_incr(void *self, const char *key, int64_t delta, int64_t *out)
{
    file_db *db = self;
    if (!db || !key)
        return LOOM_EINVAL;
    /* Allocated outside the locks. */
    char *text = malloc(LOOM__STORE_INT_TEXT);
    fentry *fresh = entry_new(key);
    int64_t next = 0;
    loom_err err = text && fresh ? enter(db, true) : LOOM_ENOMEM;
    if (err == LOOM_OK) {
        size_t i;
        bool found;
        /* An expired entry counts as absent and loses its expiry. */
        fentry *cur = find_live(db, key, loom__now_ms(), &i, &found);
        err = loom__store_incr_text(cur ? cur->value : NULL, delta, &next, text);
        if (err == LOOM_OK) {
            /* The TTL stays as it was. */
            err = put_locked(db, i, found, &fresh, &text, cur ? cur->exp : 0);
            if (err == LOOM_OK)
                err = save_locked(db);
        }
        leave(db);
    }
    free(text);
    free(fresh);
    if (err == LOOM_OK && out)
        *out = next;
    return err;
}

static loom_err file_cas(void *self, const char *key, const char *expected_json,
                         const char *new_json, uint32_t ttl_ms)
{
    if (!self || !key)
        return LOOM_EINVAL;
    return file_put(self, key, new_json, ttl_ms, true, expected_json);
}

/* list: the table is sorted, so the page is a run of it from the first
 * key that begins with prefix (or follows `after`), under the shared lock. */
static loom_err file_list(void *self, const char *prefix, const char *after, size_t limit,
                          char ***keys, size_t *count)
{
    file_db *db = self;
    if (!db || !prefix || !keys || !count || limit == 0)
        return LOOM_EINVAL;
    char **out = malloc(limit * sizeof *out); /* allocated outside the locks */
    if (!out)
        return LOOM_ENOMEM;
    loom_err err = enter(db, false);
    if (err != LOOM_OK) {
        free(out);
        return err;
    }
    const char *from = after && strcmp(after, prefix) > 0 ? after : prefix;
    bool found;
    size_t i = table_search(&db->data, from, &found);
    if (found && from == after)
        i++;
    size_t plen = strlen(prefix), n = 0;
    int64_t now = loom__now_ms();
    for (; i < db->data.len && n < limit && err == LOOM_OK; i++) {
        const fentry *e = db->data.items[i];
        if (strncmp(e->key, prefix, plen) != 0)
            break; /* sorted: no later key has the prefix */
        if (expired(e, now))
            continue;
        if (!(out[n] = strdup(e->key)))
            err = LOOM_ENOMEM;
        else
            n++;
    }
    leave(db);
    if (err != LOOM_OK) {
        while (n)
            free(out[--n]);
        free(out);
        return err;
    }
    if (n == 0) {
        free(out);
        out = NULL;
    }
    *keys = out;
    *count = n;
    return LOOM_OK;
}

/* --- lifetime ------------------------------------------------------------ */

/* The path part of a file URL (after "file:"): "PATH", "//" + "" or
 * "localhost" + "/abs/PATH". NULL when it names another host or nothing. */
static const char *url_path(const char *rest)
{
    if (rest[0] != '/' || rest[1] != '/')
        return rest;
    const char *host = rest + 2;
    const char *slash = strchr(host, '/');
    if (!slash)
        return NULL;
    size_t hlen = (size_t)(slash - host);
    if (hlen != 0 && !(hlen == 9 && strncasecmp(host, "localhost", 9) == 0))
        return NULL;
    return slash;
}

static void db_free(file_db *db)
{
    if (!db)
        return;
    table_free(&db->data);
    if (db->pin_fd >= 0)
        close(db->pin_fd);
    if (db->lock_fd >= 0)
        close(db->lock_fd); /* releases a flock held on it: none is, by contract */
    free(db->path);
    free(db->lock_path);
    free(db->dir);
    free(db);
}

static loom_err file_open(void **self, const char *url, const cJSON *options)
{
    if (!self || !url)
        return LOOM_EINVAL;
    *self = NULL;
    const char *colon = strchr(url, ':');
    if (!colon)
        return LOOM_EINVAL;
    const char *path = url_path(colon + 1);
    if (!path)
        return LOOM_ECONFIG;
    size_t len = strnlen(path, PATH_MAX);
    /* Empty, a directory, or too long for PATH.tmp.<pid>. */
    if (len == 0 || path[len - 1] == '/' || len >= PATH_MAX - TMP_SUFFIX)
        return LOOM_ECONFIG;

    file_db *db = calloc(1, sizeof *db);
    if (!db)
        return LOOM_ENOMEM;
    db->lock_fd = -1;
    db->pin_fd = -1;
    db->state = CACHE_NONE;
    db->timeout_ms = DEFAULT_TIMEOUT_MS;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(options, "timeout_ms");
    if (cJSON_IsNumber(t) && t->valuedouble >= 1 && t->valuedouble <= 600000)
        db->timeout_ms = (uint32_t)t->valuedouble;
    if (path[0] == '/') {
        db->path = strdup(path);
    } else {
        /* Relative to the working directory now, not at each operation. */
        char *cwd = getcwd(NULL, 0);
        if (!cwd) {
            db_free(db);
            return errno == ENOMEM ? LOOM_ENOMEM : LOOM_ECONFIG;
        }
        db->path = loom__asprintf("%s%s%s", cwd, cwd[strlen(cwd) - 1] == '/' ? "" : "/", path);
        free(cwd);
    }
    if (!db->path) {
        db_free(db);
        return LOOM_ENOMEM;
    }
    if (strlen(db->path) >= PATH_MAX - TMP_SUFFIX) {
        db_free(db);
        return LOOM_ECONFIG;
    }
    size_t dir_len = (size_t)(strrchr(db->path, '/') - db->path);
    db->dir = dir_len ? strndup(db->path, dir_len) : strdup("/");
    db->lock_path = loom__asprintf("%s.lock", db->path);
    if (!db->dir || !db->lock_path || pthread_mutex_init(&db->lock, NULL) != 0) {
        db_free(db);
        return LOOM_ENOMEM;
    }
    /* A directory others can write is refused now, not at the first save
     * (a missing one may appear later: checked again then). */
    if (check_dir(db) == LOOM_EIO) {
        pthread_mutex_destroy(&db->lock);
        db_free(db);
        return LOOM_ECONFIG;
    }
    *self = db;
    return LOOM_OK;
}

static void file_close(void *self)
{
    file_db *db = self;
    if (!db)
        return;
    pthread_mutex_destroy(&db->lock);
    db_free(db);
}

const loom_store_ops loom__store_file_ops = {
    .abi_version = LOOM_STORE_ABI_VERSION,
    .scheme = "file",
    .open = file_open,
    .get = file_get,
    .set = file_set,
    .del = file_del,
    .incr = file_incr,
    .close = file_close,
    .cas = file_cas,
    .list = file_list,
};
